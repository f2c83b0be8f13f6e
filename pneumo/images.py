"""Reading one image file into the small uint8 tensor the model sees.

Every path that reads pixels (the decode-once cache, the uncached loader, evaluation, predict_dir)
goes through `decode_image`, so cached and uncached pipelines give the same tensor for the same file.
Supported beyond 8-bit grayscale/RGB JPEG: RGBA/LA/palette images (alpha composited onto black, the
colour of "no signal" on a radiograph), 16-bit grayscale (scaled by the bits its values use: 8, 10,
12, 14 or 16), CMYK JPEG (converted by Pillow), and EXIF orientation (applied, so the image is upright
as a viewer shows it). DICOM files (.dcm/.dicom, or any file with the DICOM "DICM" marker that Pillow
cannot identify) are read by `pneumo.dicom`, which gives the same kind of array.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# Bump when decoding changes, so on-disk caches built by an older decoder are not reused.
DECODER_VERSION = 3
_MODES = {1: "L", 3: "RGB"}
# File names every image reader accepts (compared lower-case); .dcm/.dicom are read with pydicom.
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm", ".dicom")
DICOM_VOI_CHOICES = ("auto", "none")
DICOM_SUFFIXES = (".dcm", ".dicom")
# A DICOM file (PS3.10 7.1) has a 128-byte preamble, then these four bytes.
_DICOM_MAGIC, _DICOM_MAGIC_AT = b"DICM", 128
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_EXIF_ORIENTATION = 0x0112


class BadImageError(ValueError):
    """A file that cannot be read as an image; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def decode_image(path: str | Path, size: int, channels: int = 1, dicom_voi: str = "auto") -> np.ndarray:
    """Decode, resize to size x size and return uint8 (channels, size, size).

    JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale (never below `size`), so a
    2-megapixel X-ray is never held at full size. The aspect ratio is not kept, as in the seed's
    Keras `image_dataset_from_directory`. `channels=1` keeps the luminance (X-rays are grayscale; RGB
    files of them carry the same content), `3` keeps colour. `dicom_voi` (data.dicom.voi) applies to
    DICOM files only: `auto` uses the file's VOI LUT or window when it has one, `none` ignores them.
    """
    mode = _MODES.get(channels)
    if mode is None:
        raise ValueError(f"data.channels={channels} must be 1 or 3")
    if os.path.getsize(path) == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    if str(path).lower().endswith(DICOM_SUFFIXES):
        return _decode_dicom(path, size, channels, dicom_voi)
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft(mode if image.mode != "CMYK" else None, (size, size))
            image = _upright(image)
            image = _to_mode(image, mode)
            image = image.resize((size, size), Image.Resampling.BILINEAR)
            array = np.array(image, dtype=np.uint8)  # a writable copy, at the small size
    except Image.DecompressionBombError as error:
        raise BadImageError(path, f"too large for Pillow's decompression-bomb limit ({error})") from error
    except UnidentifiedImageError as error:
        if not has_dicom_magic(path):
            raise BadImageError(path, "not an image Pillow can identify (wrong extension or corrupt)") from error
        array = None  # a DICOM under another name (IM-0001.jpeg, or no extension)
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(path, f"truncated or corrupt image data ({error})") from error
    if array is None:
        return _decode_dicom(path, size, channels, dicom_voi)
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


def has_dicom_magic(path: str | Path) -> bool:
    """Whether the file carries the DICOM "DICM" marker at byte 128 (PS3.10 file format)."""
    with open(path, "rb") as file:
        file.seek(_DICOM_MAGIC_AT)
        return file.read(len(_DICOM_MAGIC)) == _DICOM_MAGIC


def _decode_dicom(path: str | Path, size: int, channels: int, dicom_voi: str) -> np.ndarray:
    # Imported here: pneumo.dicom imports this module, and pydicom stays unloaded for JPEG-only runs.
    from pneumo.dicom import decode_dicom

    return decode_dicom(path, size, channels, dicom_voi)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, if any (cheap check first: almost no X-ray carries one)."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) in (1, None):
        return image
    return ImageOps.exif_transpose(image)


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert to L or RGB: alpha onto black, 16-bit scaled by the bits in use, the rest by Pillow."""
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        top = max(float(values.max()), 1.0)
        bits = next(b for b in (8, 10, 12, 14, 16, 32) if top < 2 ** b)
        image = Image.fromarray(np.clip(values / (2 ** bits - 1) * 255.0, 0, 255).round().astype(np.uint8), "L")
    elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return image if image.mode == mode else image.convert(mode)


def load_tensor(path: str | Path, size: int, channels: int = 1, dicom_voi: str = "auto") -> torch.Tensor:
    """`decode_image` as a torch tensor: the loader of the uncached ImageFolder path."""
    return torch.from_numpy(decode_image(path, size, channels, dicom_voi))
