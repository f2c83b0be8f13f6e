"""Reading JPEG, PNG and the other raster formats Pillow knows into the small uint8 image the model sees.

Supported beyond 8-bit grayscale/RGB JPEG: RGBA/LA/palette images (alpha composited onto black, the
colour of "no signal" on a radiograph), 16-bit grayscale (scaled by the bits its values use: 8, 10,
12, 14 or 16), CMYK JPEG (converted by Pillow), and EXIF orientation (applied, so the image is upright
as a viewer shows it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumo.data.image_formats import BadImageError, has_dicom_magic

_MODES = {1: "L", 3: "RGB"}
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_EXIF_ORIENTATION = 0x0112


class NotPillowImage(Exception):
    """Pillow cannot identify the file but it carries the DICOM marker: the DICOM reader should try."""


def read_pillow(path: str | Path, size: int, channels: int = 1) -> np.ndarray:
    """Decode with Pillow, resize to size x size; uint8 (channels, size, size).

    JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale (never below `size`), so a
    2-megapixel X-ray is never held at full size. The aspect ratio is not kept, as in the seed's
    Keras `image_dataset_from_directory`.

    Raises:
        BadImageError: the file is not an image Pillow can read, naming the file and the reason.
        NotPillowImage: Pillow cannot identify it but it has the DICOM marker (a DICOM under another name).
    """
    mode = _MODES[channels]
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
        if has_dicom_magic(path):
            raise NotPillowImage(str(path)) from error
        raise BadImageError(path, "not an image Pillow can identify (wrong extension or corrupt)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(path, f"truncated or corrupt image data ({error})") from error
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


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
