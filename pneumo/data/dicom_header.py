"""A DICOM header as real archives hold it: repaired where a reader can infer the value, refused where not.

Archives are full of files that bend the standard and that the field's viewers (dcmtk, cornerstone/OHIF)
and pydicom still read: no 128-byte preamble, no File Meta Information, Photometric Interpretation or
Pixel Representation missing (ACR-NEMA leftovers), a Rescale Intercept without its Rescale Slope, window
values written as text. Each repair here appends one note (what was wrong, what was assumed, whose
workaround it follows) to `notes`; `dicom_reader` emits a file's notes as one `DicomWorkaroundWarning`
naming the file. What cannot be inferred raises `BadImageError(path, reason)`.

pydicom is imported inside the functions, so importing this module does not load it.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumo.data.image_formats import BadImageError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["DicomWorkaroundWarning", "check_header", "header_int", "header_numbers", "read_dataset", "rescale",
           "warn_workarounds"]

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
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
# Tags a raw data set must hold to be taken for an image when it has no 'DICM' marker: Rows, Columns,
# Pixel Data. Random bytes parsed with force=True do not produce these by accident.
_IMAGE_TAGS = (0x00280010, 0x00280011, 0x7FE00010)


class DicomWorkaroundWarning(UserWarning):
    """A DICOM file that bends the standard was decoded with workarounds; the message names file and each."""


def warn_workarounds(path: str | Path, notes: list[str]) -> None:
    """Emit a file's workaround notes as one `DicomWorkaroundWarning` ("<path>: decoded with ...")."""
    if notes:
        warnings.warn(f"{path}: decoded with {len(notes)} workaround(s): " + "; ".join(notes),
                      DicomWorkaroundWarning, stacklevel=3)


# ---- reading ---------------------------------------------------------------------------------------
def read_dataset(path: str | Path, notes: list[str]) -> Dataset:
    """The parsed file, also when it is a bare data set without the 128-byte preamble and 'DICM' marker.

    Old archives (ACR-NEMA exports, some PACS dumps) hold the data set alone. pydicom reads those only
    with `dcmread(force=True)` (its docs: "force: read a file that is missing the File Meta Information
    header"), dcmtk with `--read-dataset`. A forced read is accepted only when it yields Rows, Columns
    and Pixel Data, so a non-DICOM file named .dcm is still refused.

    Raises:
        BadImageError: not DICOM, or truncated/corrupt beyond parsing; names the file and the reason.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, force=False)
    except InvalidDicomError:
        pass  # no preamble/'DICM': perhaps a bare data set, tried below
    except Exception as error:  # noqa: BLE001 - a parser on arbitrary bytes raises many kinds
        raise BadImageError(path, f"truncated or corrupt DICOM ({type(error).__name__}: {error}); "
                                  "re-export or re-download it") from error
    try:
        ds = pydicom.dcmread(path, force=True)
        is_image = all(tag in ds for tag in _IMAGE_TAGS)
    except Exception:  # noqa: BLE001 - random bytes parsed as DICOM raise many kinds
        is_image = False
    if not is_image:
        raise BadImageError(path, "not a DICOM file (no 'DICM' marker at byte 128, and read as a bare data set "
                                  "it holds no Rows, Columns and Pixel Data); remove it or give it its real "
                                  "extension")
    notes.append("no 128-byte preamble and 'DICM' marker (PS3.10 7.1): read as a bare data set, as pydicom's "
                 "dcmread(force=True) and dcmtk's --read-dataset do")
    return ds


# ---- checking and repairing ------------------------------------------------------------------------
def check_header(ds: Dataset, path: str | Path, notes: list[str]) -> str:
    """Repair in place what a reader can infer; refuse what is not one grayscale picture.

    Repairs (each with a note): a missing Transfer Syntax UID, a missing or oddly spelled
    Photometric Interpretation, a missing Samples per Pixel, a missing or invalid Pixel
    Representation. Size, Bits Allocated/Stored, High Bit and the Pixel Data length are checked
    against the pixels in `dicom_pixels`.

    Returns:
        "MONOCHROME1" or "MONOCHROME2".
    Raises:
        BadImageError: no Pixel Data, multi-frame, colour, more than 16 bits stored, compressed
            Pixel Data without a Transfer Syntax UID or without an installed decoder.
    """
    if "PixelData" not in ds:
        raise BadImageError(path, "DICOM without (7FE0,0010) Pixel Data: a non-image object (report, "
                                  "presentation state) or a file cut before its pixels; list only complete "
                                  "image files")
    _infer_transfer_syntax(ds, path, notes)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise BadImageError(path, f"multi-frame DICOM (NumberOfFrames={frames}): one radiograph per file is "
                                  "expected; export the frame to use as its own file")
    photometric = _photometric(ds, notes)
    samples = header_int(ds, "SamplesPerPixel")
    if samples is None and photometric in GRAYSCALE:
        ds.SamplesPerPixel = samples = 1
        notes.append("no Samples per Pixel (0028,0002): 1 assumed for a MONOCHROME image (ACR-NEMA files "
                     "lack it)")
    if photometric not in GRAYSCALE or samples != 1:
        raise BadImageError(path, f"colour DICOM (PhotometricInterpretation={photometric or 'missing'}, "
                                  f"SamplesPerPixel={samples}) is not a radiograph this model reads: export it "
                                  "as MONOCHROME2 grayscale or remove it")
    bits = header_int(ds, "BitsStored")
    if bits is not None and 16 < bits <= (header_int(ds, "BitsAllocated") or 0):
        raise BadImageError(path, f"BitsStored={bits} is outside 1..16: only integer grayscale up to 16 bits "
                                  "is read; re-export the image as 8-16 bit MONOCHROME2")
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        _require_decoder(syntax, path)
    _pixel_representation(ds, notes)
    return photometric


def _infer_transfer_syntax(ds: Dataset, path: str | Path, notes: list[str]) -> None:
    """A file without (0002,0010) Transfer Syntax UID gets the one its data set was parsed with.

    pydicom detects implicit/explicit VR and byte order from the first element when the UID is
    missing (its filereader, issue #258) but then refuses `pixel_array`. Implicit VR Little Endian is
    the DICOM default transfer syntax (PS3.5 10.1). Encapsulated (compressed) Pixel Data names no
    codec anywhere else, so that case is refused.
    """
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if ds.file_meta.get("TransferSyntaxUID"):
        return
    if ds["PixelData"].is_undefined_length:
        raise BadImageError(path, "compressed (encapsulated) Pixel Data but no Transfer Syntax UID (0002,0010) "
                                  "names the codec; re-export the file with its File Meta Information")
    implicit, little = ds.original_encoding
    syntax = ImplicitVRLittleEndian if implicit is not False else (
        ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
    ds.file_meta.TransferSyntaxUID = syntax
    notes.append(f"no Transfer Syntax UID (0002,0010): {syntax.name} inferred from how the data set is encoded "
                 "(pydicom's reader, issue #258; Implicit VR Little Endian is the default, PS3.5 10.1)")


def _photometric(ds: Dataset, notes: list[str]) -> str:
    """The Photometric Interpretation, MONOCHROME2 when missing on a one-sample image.

    Missing: dcmtk reads such ACR-NEMA images as MONOCHROME2 (dcm2pnm --accept-acr-nema, in
    `DicomImage::Init`). Spelled with spaces or lower case ('monochrome 2'): dcmtk keeps only the
    letters and digits, upper-cased, before matching; so do we.
    """
    value = str(ds.get("PhotometricInterpretation") or "").strip()
    samples = header_int(ds, "SamplesPerPixel")
    if not value:
        if samples not in (None, 1):
            return ""  # a colour image without its interpretation: refused by the caller
        ds.PhotometricInterpretation = "MONOCHROME2"
        notes.append("no Photometric Interpretation (0028,0004): MONOCHROME2 assumed, as dcmtk does for "
                     "ACR-NEMA images (dcm2pnm --accept-acr-nema)")
        return "MONOCHROME2"
    cleaned = "".join(c for c in value.upper() if c.isalnum())
    if cleaned in GRAYSCALE and cleaned != value:
        ds.PhotometricInterpretation = cleaned
        notes.append(f"Photometric Interpretation {value!r} read as {cleaned} (letters and digits only, "
                     "upper case, as dcmtk matches it)")
    return cleaned if cleaned in GRAYSCALE else value.upper()


def _pixel_representation(ds: Dataset, notes: list[str]) -> None:
    """Missing or not 0/1: unsigned (0) assumed, as dcmtk does for an invalid value (`DiImage`).

    A wrong-but-valid value is repaired in `dicom_pixels` only where the pixels prove it.
    """
    value = header_int(ds, "PixelRepresentation")
    if value is None:
        ds.PixelRepresentation = 0
        notes.append("no Pixel Representation (0028,0103): unsigned (0) assumed")
    elif value not in (0, 1):
        ds.PixelRepresentation = 0
        notes.append(f"Pixel Representation {value} is neither 0 nor 1: unsigned (0) assumed, as dcmtk does")


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


# ---- numbers written as text -----------------------------------------------------------------------
def header_int(ds: Dataset, keyword: str) -> int | None:
    """An integer attribute (US/IS) as int; None when absent, empty or not a number."""
    value = ds.get(keyword)
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, str)):
        value = next(iter(value), None)  # a multi-valued US where one value belongs
    try:
        return int(str(value).strip()) if value is not None and str(value).strip() != "" else None
    except ValueError:
        return None


def header_numbers(ds: Dataset, keyword: str, path: str | Path, notes: list[str]) -> list[float]:
    """The values of a numeric (DS) attribute as floats; [] when absent or empty.

    Tolerates what pydicom leaves as text: one string holding backslash-separated values (an ST/LO/UN
    element, '40\\400'), a decimal comma ('1,5', written by localised software; pydicom keeps such a
    DS as str), NUL or space padding.

    Raises:
        BadImageError: a value that is not a finite number even so, naming the attribute.
    """
    if keyword not in ds or ds[keyword].value is None:
        return []
    element = ds[keyword]
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("latin-1")
    if isinstance(value, str):
        parts: list[Any] = value.split("\\")
        if len(parts) > 1:
            notes.append(f"{keyword} stored as one text value {value!r} (VR {element.VR}): split at the "
                         "backslashes into its values")
    elif hasattr(value, "__iter__"):
        parts = list(value)
    else:
        parts = [value]
    numbers = [_number(part, keyword, path, notes) for part in parts]
    return [n for n in numbers if n is not None]


def _number(part: Any, keyword: str, path: str | Path, notes: list[str]) -> float | None:
    if isinstance(part, (int, float)):
        number = float(part)
    else:
        text = str(part).strip(" \x00\t\r\n")
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            number = math.nan
            if text.count(",") == 1 and "." not in text:
                try:
                    number = float(text.replace(",", "."))
                    notes.append(f"{keyword} {text!r} has a decimal comma: read as {number:g}")
                except ValueError:
                    pass
    if not math.isfinite(number):
        raise BadImageError(path, f"{keyword} value {part!r} is not a number; fix the header or re-export the "
                                  "image (data.dicom.voi=none skips window values)")
    return number


def rescale(ds: Dataset, path: str | Path, notes: list[str]) -> tuple[float, float]:
    """(slope, intercept) of the modality rescale (PS3.3 C.11.1.1.2); (1, 0) when neither is present.

    Where only one is present, or the slope is 0 (which would map every pixel to one value), the
    missing/zero slope is 1 and a missing intercept 0: cornerstone's `rescaleSlope || 1` and
    `rescaleIntercept ?? 0` (dicomImageLoader's scaling parameters). pydicom's `apply_modality_lut`
    instead ignores a lone intercept.
    """
    slopes = header_numbers(ds, "RescaleSlope", path, notes)
    intercepts = header_numbers(ds, "RescaleIntercept", path, notes)
    if not slopes and not intercepts:
        return 1.0, 0.0
    slope = slopes[0] if slopes else None
    intercept = intercepts[0] if intercepts else 0.0
    if slope is None:
        notes.append("Rescale Intercept without Rescale Slope: slope 1 assumed, as cornerstone does")
        slope = 1.0
    elif not intercepts:
        notes.append("Rescale Slope without Rescale Intercept: intercept 0 assumed, as cornerstone does")
    if slope == 0:
        notes.append("Rescale Slope 0 would map every pixel to one value: slope 1 assumed, as cornerstone "
                     "does (rescaleSlope || 1)")
        slope = 1.0
    return slope, intercept
