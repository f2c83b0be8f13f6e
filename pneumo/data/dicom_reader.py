"""Reading one DICOM radiograph into the same small uint8 image a JPEG of it would give.

Hospital exports (RSNA, PACS dumps) are DICOM, not JPEG: 8-16 bit integers, a rescale to physical
units, an optional window (VOI) a radiologist would display with, and an inverted MONOCHROME1
variant. `decode_dicom` turns all of them into the display a viewer shows, as uint8 0..255 with bone
bright, then resizes exactly as `pneumo.data.readers.read_image` does for a PNG, so a model trained on
JPEGs sees DICOMs the same way.

Files that bend the standard the way archives are full of, and that the field's viewers still show,
are decoded as those viewers show them (`dicom_header`: reading and header repairs, `dicom_pixels`:
pixel geometry and bit layout, `dicom_luts`: lookup tables); each such file gets one
`DicomWorkaroundWarning` naming it and every workaround used. Anything that is not one grayscale
picture, or cannot be inferred, is refused with a `BadImageError` naming the file and the reason, so
the data pipeline lists it as a bad file.

pydicom is imported inside the functions: `pneumo.data.readers` (and the GPU bench that imports it)
must load without paying for, or even having, pydicom.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pneumo.data.dicom_header import (DicomWorkaroundWarning, check_header, header_numbers, read_dataset, rescale,
                                      warn_workarounds)
from pneumo.data.dicom_luts import read_lut
from pneumo.data.dicom_pixels import stored_values
from pneumo.data.image_formats import DICOM_VOI_CHOICES, BadImageError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["DicomWorkaroundWarning", "decode_dicom", "dicom_to_gray", "display_range"]

_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def decode_dicom(path: str | Path, size: int, channels: int = 1, dicom_voi: str = "auto") -> np.ndarray:
    """uint8 (channels, size, size): the displayed radiograph, resized with Pillow BILINEAR.

    The aspect ratio is not kept, as for JPEGs; `channels=3` repeats the gray image. Raises and
    warns as `dicom_to_gray`.
    """
    if channels not in (1, 3):
        raise ValueError(f"data.channels={channels} must be 1 or 3")
    gray = dicom_to_gray(path, dicom_voi)
    small = np.asarray(Image.fromarray(gray, "L").resize((size, size), Image.Resampling.BILINEAR))
    return np.repeat(small[None], channels, axis=0)  # a writable copy


def dicom_to_gray(path: str | Path, dicom_voi: str = "auto") -> np.ndarray:
    """Full-size uint8 (rows, columns) display of a single-frame grayscale DICOM.

    Order as in a viewer (PS3.4 N.2.1.1): stored values -> modality rescale (slope/intercept or
    Modality LUT) -> VOI (the first VOI LUT, else the first valid window, when `dicom_voi="auto"`;
    otherwise the full range the stored bits can hold) -> 0..255 -> MONOCHROME1 inverted, so that
    bone is bright as in MONOCHROME2.

    Raises:
        ValueError: `dicom_voi` is not one of DICOM_VOI_CHOICES.
        BadImageError: the file is not one decodable grayscale picture; names the file and the reason.
    Warns:
        DicomWorkaroundWarning: once per file decoded with workarounds, naming the file and each.
    """
    if dicom_voi not in DICOM_VOI_CHOICES:
        raise ValueError(f"data.dicom.voi={dicom_voi!r}: choose one of {', '.join(DICOM_VOI_CHOICES)}")
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            # pydicom warns about odd header values that real exports often carry; the ones that matter
            # are repaired and reported below as one warning per file, the rest would drown the progress.
            warnings.simplefilter("ignore")
            ds = read_dataset(path, notes)
            photometric = check_header(ds, path, notes)
            values, low, high = _modality_values(ds, stored_values(ds, path, notes), path, notes)
            display = _voi(ds, values, path, notes) if dicom_voi == "auto" else None
            if display is None:
                display = _scale(values, low, high, ds, path)
    except BadImageError:
        raise
    except Exception as error:  # noqa: BLE001 - a malformed header value must not stop a whole decode
        raise BadImageError(path, f"malformed DICOM header ({type(error).__name__}: {error}); fix or re-export "
                                  "the file (data.dicom.voi=none skips its window/VOI LUT)") from error
    warn_workarounds(path, notes)
    if photometric == "MONOCHROME1":
        display = 255.0 - display  # MONOCHROME1: low values are white
    return np.clip(np.rint(display), 0, 255).astype(np.uint8)


def _scale(values: np.ndarray, low: float, high: float, ds: Dataset, path: str | Path) -> np.ndarray:
    """Modality values to 0..255 over (low, high): the no-VOI mapping."""
    if high <= low:
        raise BadImageError(path, f"the rescale maps every stored value to {low} (Rescale Slope="
                                  f"{ds.get('RescaleSlope')}): the file holds no picture")
    return (values - low) * (255.0 / (high - low))


def display_range(ds: Dataset, path: str | Path = "<dataset>") -> tuple[float, float]:
    """(low, high) of the modality output when no VOI is applied: what the stored bits can hold.

    Scaling by the bits stored (not the image's own min/max) keeps one brightness scale across
    files (the 16-bit PNG path likewise scales by a bit depth): 12 bits map 0..4095 to 0..255. A
    Modality LUT gives 0 .. 2**depth - 1 (PS3.3 C.11.1.1.1), depth being the bits its entries reach
    (see `dicom_luts`); a rescale gives the stored range rescaled, sorted so that a negative slope
    still gives low < high. `ds` should have been through `check_header` and `stored_values`.
    """
    sequence = ds.get("ModalityLUTSequence")
    lut = read_lut(ds, sequence[0], "Modality LUT", []) if sequence else None
    if lut is not None:
        return 0.0, lut.top
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2 ** bits - 1
    slope, intercept = rescale(ds, path, [])
    low, high = sorted((low * slope + intercept, high * slope + intercept))
    return float(low), float(high)


def _modality_values(ds: Dataset, stored: np.ndarray, path: str | Path,
                     notes: list[str]) -> tuple[np.ndarray, float, float]:
    """(values, low, high): stored values through the Modality LUT or rescale (PS3.3 C.11.1), as float64,
    and `display_range`. A Modality LUT is preferred when both are present, as pydicom does."""
    sequence = ds.get("ModalityLUTSequence")
    lut = read_lut(ds, sequence[0], "Modality LUT", notes) if sequence else None
    if lut is not None:
        return lut(stored), 0.0, lut.top
    slope, intercept = rescale(ds, path, notes)
    low, high = display_range(ds, path)
    return stored.astype(np.float64) * slope + intercept, low, high


# ---- VOI ------------------------------------------------------------------------------------------
def _voi(ds: Dataset, values: np.ndarray, path: str | Path, notes: list[str]) -> np.ndarray | None:
    """0..255 through the file's first VOI LUT, else its first valid window; None when it has neither.

    A VOI LUT is preferred over a window when both are present, as pydicom and PS3.4 N.2.1.1 do. Of
    several windows the first is the default (PS3.3 C.11.2.1.2); an invalid one (width below 1 for
    LINEAR, not above 0 otherwise) is skipped with a note, as a viewer cannot draw it either.
    """
    sequence = ds.get("VOILUTSequence")
    lut = read_lut(ds, sequence[0], "VOI LUT", notes) if sequence else None
    if lut is not None:
        return lut(values) * (255.0 / lut.top)
    centers = header_numbers(ds, "WindowCenter", path, notes)
    widths = header_numbers(ds, "WindowWidth", path, notes)
    if not centers or not widths:
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in _VOI_FUNCTIONS:
        notes.append(f"VOI LUT Function {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID: LINEAR used, as "
                     "dcmtk does for an unknown value")
        function = "LINEAR"
    for number, (center, width) in enumerate(zip(centers, widths), start=1):
        if (width >= 1) if function == "LINEAR" else (width > 0):
            return _apply_window(values, center, width, function)
        notes.append(f"window {number} (center {center:g}, width {width:g}) has a width a {function} window "
                     "cannot have: ignored")
    return None


def _apply_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Window center c / width w straight to 0..255 (y_min=0, y_max=255), PS3.3 C.11.2.1.2.

    LINEAR (the default, C.11.2.1.2.1), w >= 1:
        y = 0                                        if x <= c - 0.5 - (w - 1) / 2
        y = 255                                      if x >  c - 0.5 + (w - 1) / 2
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255  otherwise
    LINEAR_EXACT (C.11.2.1.3.2), w > 0: the same with c and w in place of c - 0.5 and w - 1.
    SIGMOID (C.11.2.1.3.1), w > 0: y = 255 / (1 + exp(-4 (x - c) / w)).
    pydicom's `apply_windowing` maps to the stored range instead, which would need a second
    rescale; computing 0..255 directly is one step and exact.
    """
    if function == "LINEAR":
        if width == 1:  # a threshold: the middle branch is empty
            return np.where(x <= center - 0.5, 0.0, 255.0)
        return np.clip(((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0, 0.0, 255.0)
    if function == "LINEAR_EXACT":
        return np.clip(((x - center) / width + 0.5) * 255.0, 0.0, 255.0)
    return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
