"""Reading one image file into the small uint8 tensor the model sees.

Every path that reads pixels (the decode-once cache, the uncached loader, evaluation) goes through
`decode_image`, so cached and uncached pipelines give the same tensor for the same file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# Bump when decoding changes, so on-disk caches built by an older decoder are not reused.
DECODER_VERSION = 1
_MODES = {1: "L", 3: "RGB"}


class BadImageError(ValueError):
    """A file that cannot be read as an image; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def decode_image(path: str | Path, size: int, channels: int = 1) -> np.ndarray:
    """Decode, resize to size x size and return uint8 (channels, size, size).

    JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale (never below `size`), so a
    2-megapixel X-ray is never held at full size. The aspect ratio is not kept, as in the seed's
    Keras `image_dataset_from_directory`. `channels=1` keeps the luminance (X-rays are grayscale; RGB
    files of them carry the same content), `3` keeps colour.
    """
    mode = _MODES.get(channels)
    if mode is None:
        raise ValueError(f"data.channels={channels} must be 1 or 3")
    try:
        with Image.open(path) as image:
            image.draft(mode, (size, size))
            image = _to_mode(image, mode)
            image = image.resize((size, size), Image.Resampling.BILINEAR)
            array = np.array(image, dtype=np.uint8)  # a writable copy, at the small size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadImageError(path, f"cannot be decoded as an image ({error})") from error
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert to L or RGB; 16-bit grayscale is scaled to 8 bits instead of being clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        array = array / max(float(array.max()), 1.0) * 255.0
        image = Image.fromarray(array.round().astype(np.uint8), "L")
    return image if image.mode == mode else image.convert(mode)


def load_tensor(path: str | Path, size: int, channels: int = 1) -> torch.Tensor:
    """`decode_image` as a torch tensor: the loader of the uncached ImageFolder path."""
    return torch.from_numpy(decode_image(path, size, channels))
