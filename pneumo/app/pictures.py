"""The page's pictures, made in memory: a decoded image and its Grad-CAM overlay as PNG data URLs.

The overlay is drawn as `pneumo.evaluation.gradcam.save_overlays` draws evaluate.py's: the image in gray,
the map resized to it (bilinear) in matplotlib's jet colours at alpha 0.4 on top. Nothing touches the disk.
"""
from __future__ import annotations

import base64
import io

import cv2
import numpy as np
from matplotlib import colormaps
from PIL import Image

OVERLAY_ALPHA = 0.4  # save_overlays' default


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (C, H, W) with C = 1 or 3, as `read_image` returns it -> uint8 (H, W, 3).

    Raises:
        ValueError: another shape.
    """
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (1 or 3, H, W) image, got shape {image.shape}")
    hwc = np.transpose(image, (1, 2, 0))
    return np.repeat(hwc, 3, axis=2) if hwc.shape[2] == 1 else np.ascontiguousarray(hwc)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The image (uint8 (C, H, W)) in gray with `heat` (float (h, w) in [0, 1], any resolution) in jet
    colours over it; uint8 (H, W, 3).

    Raises:
        ValueError: `heat` is not two-dimensional, or `image` has another shape than (1 or 3, H, W).
    """
    if heat.ndim != 2:
        raise ValueError(f"expected a 2-D Grad-CAM map, got shape {heat.shape}")
    gray = to_rgb(image).astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2)  # X-rays shown in gray
    height, width = gray.shape[:2]
    heat = np.clip(heat.astype(np.float32), 0.0, 1.0)
    if heat.shape != (height, width):
        heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    colours = colormaps["jet"](heat)[..., :3].astype(np.float32) * 255.0
    return np.clip((1.0 - alpha) * gray + alpha * colours + 0.5, 0, 255).astype(np.uint8)


def png_data_url(rgb: np.ndarray) -> str:
    """uint8 (H, W, 3) -> "data:image/png;base64,..." for an <img src>."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
