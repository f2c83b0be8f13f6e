"""Reading one DICOM radiograph into the same small uint8 image a JPEG of it would give.

Hospital exports (RSNA, PACS dumps) are DICOM, not JPEG: 8-16 bit integers, a rescale to physical
units, an optional window (VOI) a radiologist would display with, and an inverted MONOCHROME1
variant. `decode_dicom` turns all of them into the display a viewer shows, as uint8 0..255 with bone
bright, then resizes exactly as `pneumo.images.decode_image` does for a PNG, so a model trained on
JPEGs sees DICOMs the same way. Anything that is not one grayscale picture is refused with a
`BadImageError` naming the reason, so the data pipeline lists it as a bad file.

pydicom is imported inside the functions: `pneumo.images` (and the GPU bench that imports it) must
load without paying for, or even having, pydicom.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pneumo.images import DICOM_VOI_CHOICES, BadImageError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["decode_dicom", "dicom_to_gray", "display_range"]

_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
# Which package to install for a compressed transfer syntax pydicom has no working plugin for
# (keyed by UID; the JPEG family is also decoded by Pillow for 8-bit baseline).
_DECODER_PACKAGES = {
    **dict.fromkeys(("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                     "1.2.840.10008.1.2.4.70"), "pylibjpeg pylibjpeg-libjpeg (pinned in requirements.txt)"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"), "pyjpegls"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                     "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"), "pylibjpeg pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}


def decode_dicom(path: str | Path, size: int, channels: int = 1, dicom_voi: str = "auto") -> np.ndarray:
    """uint8 (channels, size, size): the displayed radiograph, resized with Pillow BILINEAR.

    The aspect ratio is not kept, as for JPEGs; `channels=3` repeats the gray image.
    """
    if channels not in (1, 3):
        raise ValueError(f"data.channels={channels} must be 1 or 3")
    gray = dicom_to_gray(path, dicom_voi)
    small = np.asarray(Image.fromarray(gray, "L").resize((size, size), Image.Resampling.BILINEAR))
    return np.repeat(small[None], channels, axis=0)  # a writable copy


def dicom_to_gray(path: str | Path, dicom_voi: str = "auto") -> np.ndarray:
    """Full-size uint8 (rows, columns) display of a single-frame grayscale DICOM.

    Order as in a viewer (PS3.4 N.2.1.1): stored values -> modality rescale (slope/intercept or
    Modality LUT) -> VOI (the first window or VOI LUT, when `dicom_voi="auto"` and the file has one;
    otherwise the full range the stored bits can hold) -> 0..255 -> MONOCHROME1 inverted, so that
    bone is bright as in MONOCHROME2.
    """
    if dicom_voi not in DICOM_VOI_CHOICES:
        raise ValueError(f"data.dicom.voi={dicom_voi!r}: choose one of {', '.join(DICOM_VOI_CHOICES)}")
    try:
        with warnings.catch_warnings():
            # pydicom warns about odd header values that real exports often carry; they do not affect
            # the pixels, and a warning per file would drown the decode progress.
            warnings.simplefilter("ignore")
            ds = _read(path)
            photometric = _refuse_unsupported(ds, path)
            values = _modality_values(ds, _pixels(ds, path), path)
            display = _voi(ds, values, path) if dicom_voi == "auto" else None
            if display is None:
                display = _scale_by_bits(ds, values, path)
    except BadImageError:
        raise
    except Exception as error:  # noqa: BLE001 - a malformed header value must not stop a whole decode
        raise BadImageError(path, f"malformed DICOM header ({type(error).__name__}: {error}); fix or re-export "
                                  "the file (data.dicom.voi=none skips its window/VOI LUT)") from error
    if photometric == "MONOCHROME1":
        display = 255.0 - display  # MONOCHROME1: low values are white
    return np.clip(np.rint(display), 0, 255).astype(np.uint8)


def _scale_by_bits(ds: Dataset, values: np.ndarray, path: str | Path) -> np.ndarray:
    """Modality values to 0..255 over `display_range`: the no-VOI mapping."""
    low, high = display_range(ds)
    if high <= low:
        raise BadImageError(path, f"the rescale maps every stored value to {low} (Rescale Slope="
                                  f"{ds.get('RescaleSlope')}): the file holds no picture")
    return (values - low) * (255.0 / (high - low))


def display_range(ds: Dataset) -> tuple[float, float]:
    """(low, high) of the modality output when no VOI is applied: what the stored bits can hold.

    Scaling by the bits stored (not the image's own min/max) keeps one brightness scale across
    files (the 16-bit PNG path likewise scales by a bit depth): 12 bits map 0..4095 to 0..255. A
    Modality LUT gives 0 .. 2**depth - 1 (PS3.3 C.11.1.1.1); a rescale gives the stored range
    rescaled, sorted so that a negative slope still gives low < high.
    """
    lut = ds.get("ModalityLUTSequence")
    if lut:
        return 0.0, float(2 ** int(lut[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2 ** bits - 1
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return float(low), float(high)


# ---- reading and refusing ------------------------------------------------------------------------
def _read(path: str | Path) -> Dataset:
    """The parsed file; anything pydicom cannot parse as DICOM is a bad file, named with the reason."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, force=False)
    except InvalidDicomError as error:
        raise BadImageError(path, "not a DICOM file (no 'DICM' marker at byte 128 and no file meta header); "
                                  "remove it or give it its real extension") from error
    except Exception as error:  # noqa: BLE001 - a parser on arbitrary bytes raises many kinds
        raise BadImageError(path, f"truncated or corrupt DICOM ({type(error).__name__}: {error}); "
                                  "re-export or re-download it") from error


def _refuse_unsupported(ds: Dataset, path: str | Path) -> str:
    """Refuse, before decoding, what is not one grayscale picture this model can read.

    Returns the photometric interpretation (MONOCHROME1 or MONOCHROME2).
    """
    if "PixelData" not in ds:
        raise BadImageError(path, "DICOM without (7FE0,0010) Pixel Data: a non-image object (report, "
                                  "presentation state) or a file cut before its pixels; list only complete "
                                  "image files")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise BadImageError(path, f"multi-frame DICOM (NumberOfFrames={frames}): one radiograph per file is "
                                  "expected; export the frame to use as its own file")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _GRAYSCALE or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise BadImageError(path, f"colour DICOM (PhotometricInterpretation={photometric or 'missing'}, "
                                  f"SamplesPerPixel={ds.get('SamplesPerPixel')}) is not a radiograph this "
                                  "model reads: export it as MONOCHROME2 grayscale or remove it")
    bits = ds.get("BitsStored")
    if bits is None or not 1 <= int(bits) <= 16:
        raise BadImageError(path, f"BitsStored={bits} is outside 1..16: only integer grayscale up to 16 bits "
                                  "is read; re-export the image as 8-16 bit MONOCHROME2")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        _require_decoder(syntax, path)
    return photometric


def _require_decoder(syntax: Any, path: str | Path) -> None:
    """A compressed transfer syntax needs an installed plugin; say which package provides it."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise BadImageError(path, f"compressed as {syntax.name} ({syntax}), which pydicom cannot decode: "
                                  "convert it to an uncompressed or JPEG transfer syntax (e.g. dcmdjpeg)") \
            from error
    if not decoder.is_available:
        package = _DECODER_PACKAGES.get(str(syntax), "a pydicom decoding plugin for it")
        raise BadImageError(path, f"compressed as {syntax.name} ({syntax}) and no installed package decodes "
                                  f"it: pip install {package}")


def _pixels(ds: Dataset, path: str | Path) -> np.ndarray:
    """Stored values, (rows, columns); pydicom 3 applies no rescale or window here."""
    try:
        stored = ds.pixel_array
    except Exception as error:  # noqa: BLE001 - decoders and buffer checks raise many kinds
        raise BadImageError(path, f"pixel data cannot be decoded ({type(error).__name__}: {error}); "
                                  "the file is truncated or corrupt: re-export or re-download it") from error
    if stored.ndim != 2:
        raise BadImageError(path, f"pixel data decodes to shape {stored.shape}, not one grayscale image")
    return stored


def _modality_values(ds: Dataset, stored: np.ndarray, path: str | Path) -> np.ndarray:
    """Stored values through the Modality LUT or Rescale Slope/Intercept (PS3.3 C.11.1), as float."""
    from pydicom.pixels import apply_modality_lut

    try:
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    except Exception as error:  # noqa: BLE001 - a malformed Modality LUT raises many kinds
        raise BadImageError(path, f"the Modality LUT or rescale cannot be applied ({type(error).__name__}: "
                                  f"{error}); fix the header or re-export the image") from error


# ---- VOI ------------------------------------------------------------------------------------------
def _voi(ds: Dataset, values: np.ndarray, path: str | Path) -> np.ndarray | None:
    """0..255 through the file's first VOI LUT, else its first window; None when it has neither.

    A VOI LUT is preferred over a window when both are present, as pydicom and PS3.4 N.2.1.1 do.
    """
    sequence = ds.get("VOILUTSequence")
    if sequence and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]:
        return _apply_voi_lut(ds, sequence[0], values, path)
    if all(name in ds and ds[name].VM for name in ("WindowCenter", "WindowWidth")):
        center, width = _first(ds["WindowCenter"]), _first(ds["WindowWidth"])
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        return _apply_window(values, center, width, function, path)
    return None


def _first(element: Any) -> float:
    """The first value of a window attribute: of several alternative windows, the first is the default."""
    return float(element.value[0] if element.VM > 1 else element.value)


def _apply_window(x: np.ndarray, center: float, width: float, function: str, path: str | Path) -> np.ndarray:
    """Window center c / width w straight to 0..255 (y_min=0, y_max=255), PS3.3 C.11.2.1.2.

    LINEAR (the default, C.11.2.1.2.1):
        y = 0                                        if x <= c - 0.5 - (w - 1) / 2
        y = 255                                      if x >  c - 0.5 + (w - 1) / 2
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255  otherwise
    LINEAR_EXACT (C.11.2.1.3.2): the same with c and w in place of c - 0.5 and w - 1.
    SIGMOID (C.11.2.1.3.1): y = 255 / (1 + exp(-4 (x - c) / w)).
    pydicom's `apply_windowing` maps to the stored range instead, which would need a second
    rescale; computing 0..255 directly is one step and exact.
    """
    if function == "LINEAR":
        if width < 1:
            raise BadImageError(path, f"Window Width {width} < 1 is invalid for a LINEAR window; fix the "
                                      "header or pass data.dicom.voi=none to ignore windows")
        if width == 1:  # a threshold: the middle branch is empty
            return np.where(x <= center - 0.5, 0.0, 255.0)
        return np.clip(((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0, 0.0, 255.0)
    if width <= 0:
        raise BadImageError(path, f"Window Width {width} <= 0 is invalid; fix the header or pass "
                                  "data.dicom.voi=none to ignore windows")
    if function == "LINEAR_EXACT":
        return np.clip(((x - center) / width + 0.5) * 255.0, 0.0, 255.0)
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    raise BadImageError(path, f"VOI LUT Function {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID; "
                              "pass data.dicom.voi=none to ignore windows")


def _apply_voi_lut(ds: Dataset, item: Dataset, x: np.ndarray, path: str | Path) -> np.ndarray:
    """A VOI LUT (PS3.3 C.11.2.1.1) to 0..255, scaled by its output bit depth.

    Indexed here rather than with pydicom 3.0.2's `apply_voi`, which keeps the indices in the
    LUT's output dtype: an 8-bit LUT with more than 256 entries wraps them around.
    """
    entries, first_mapped, depth = (int(v) for v in item.LUTDescriptor)
    entries = entries or 2 ** 16  # 0 means 65536 entries
    if not 1 <= depth <= 16:
        raise BadImageError(path, f"VOI LUT output depth {depth} bits is outside 1..16; pass "
                                  "data.dicom.voi=none to ignore the VOI LUT")
    lut = _lut_values(ds, item)
    if len(lut) < entries:
        raise BadImageError(path, f"VOI LUT holds {len(lut)} entries but its descriptor says {entries}; pass "
                                  "data.dicom.voi=none to ignore the VOI LUT")
    # Inputs below the first mapped value take the first entry, above the last take the last.
    index = np.clip(np.rint(x).astype(np.int64) - first_mapped, 0, entries - 1)
    return lut[:entries][index].astype(np.float64) * (255.0 / (2 ** depth - 1))


def _lut_values(ds: Dataset, item: Dataset) -> np.ndarray:
    """LUT Data as integers: US gives numbers, OW gives raw 16-bit words in the file's byte order."""
    value = item.LUTData
    if isinstance(value, (bytes, bytearray)):
        little = ds.original_encoding[1] is not False  # big endian is retired; default to little
        return np.frombuffer(value, dtype="<u2" if little else ">u2").astype(np.int64)
    return np.atleast_1d(np.asarray(value, dtype=np.int64))
