"""The one entry for reading an image file into the small uint8 array the model sees: `read_image`.

Every path that reads pixels (the decode-once cache, the uncached loader, evaluation, predict_dir,
serving, the benchmarks) goes through `read_image`, so cached and uncached pipelines give the same
array for the same file. It picks the reader by format, one reader per format as in MONAI's
ImageReader design: `pillow_reader` for JPEG/PNG and the other raster formats, `dicom_reader` for
DICOM (.dcm/.dicom, or any file with the DICOM "DICM" marker that Pillow cannot identify).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pneumo.data.image_formats import DICOM_SUFFIXES, BadImageError
from pneumo.data.pillow_reader import NotPillowImage, read_pillow


def read_image(path: str | Path, size: int, channels: int = 1, dicom_voi: str = "auto") -> np.ndarray:
    """Decode, resize to size x size and return uint8 (channels, size, size).

    `channels=1` keeps the luminance (X-rays are grayscale; RGB files of them carry the same
    content), `3` keeps colour. `dicom_voi` (data.dicom.voi) applies to DICOM files only: `auto`
    uses the file's VOI LUT or window when it has one, `none` ignores them.

    Raises:
        ValueError: `channels` is not 1 or 3.
        BadImageError: the file cannot be read as one grayscale or colour picture; names file and reason.
    """
    if channels not in (1, 3):
        raise ValueError(f"data.channels={channels} must be 1 or 3")
    if os.path.getsize(path) == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    if str(path).lower().endswith(DICOM_SUFFIXES):
        return _read_dicom(path, size, channels, dicom_voi)
    try:
        return read_pillow(path, size, channels)
    except NotPillowImage:
        return _read_dicom(path, size, channels, dicom_voi)  # a DICOM under another name (IM-0001.jpeg)


def _read_dicom(path: str | Path, size: int, channels: int, dicom_voi: str) -> np.ndarray:
    # Imported here so that pydicom stays unloaded (and optional) for JPEG-only runs and the GPU bench.
    from pneumo.data.dicom_reader import decode_dicom

    return decode_dicom(path, size, channels, dicom_voi)


def load_tensor(path: str | Path, size: int, channels: int = 1, dicom_voi: str = "auto") -> torch.Tensor:
    """`read_image` as a torch tensor (uint8, (channels, size, size)): the uncached loader's reader."""
    return torch.from_numpy(read_image(path, size, channels, dicom_voi))
