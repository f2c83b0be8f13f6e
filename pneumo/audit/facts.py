"""What each image file is, read from its header without decoding the pixels: format, size, mode, bit depth.

Pillow's `Image.open` parses the header only (pixels are read on `load()`, which is never called here);
DICOM headers are read with `pydicom.dcmread(stop_before_pixels=True)`. Sizes are as a viewer shows the
image: an EXIF orientation that turns it by 90 degrees swaps width and height, as the reader does.
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from pneumo.data.image_formats import DICOM_SUFFIXES, has_dicom_magic

# Bits per sample of Pillow modes (a JPEG's own precision, 8 or 12, wins when the header gives it).
_MODE_BITS = {"1": 1, "L": 8, "P": 8, "LA": 8, "PA": 8, "RGB": 8, "RGBA": 8, "RGBX": 8, "CMYK": 8, "YCbCr": 8,
              "LAB": 8, "HSV": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}
_EXIF_ORIENTATION = 0x0112
_TURNED = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees


@dataclass(frozen=True)
class FileFacts:
    """One file's header facts.

    Attributes:
        path: the file.
        format: "JPEG", "PNG", ... (Pillow's name) or "DICOM"; "unreadable" when the header cannot be read.
        width, height: pixels, as displayed (EXIF orientation applied); 0 when unreadable.
        mode: Pillow's mode ("L", "RGB", "I;16") or the DICOM Photometric Interpretation ("MONOCHROME1").
        bits: bits per sample (JPEG precision, PNG/TIFF mode, DICOM Bits Stored); None when unknown.
        encoding: how the pixels are stored: the format for Pillow files, the transfer syntax's name for
            DICOM ("Explicit VR Little Endian", "JPEG Baseline (Process 1)").
        error: why the header could not be read, else None.
    """

    path: str
    format: str
    width: int
    height: int
    mode: str
    bits: int | None
    encoding: str
    error: str | None = None

    @property
    def aspect(self) -> float:
        """width / height (0.0 when unreadable)."""
        return self.width / self.height if self.height else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_facts(path: str | Path) -> FileFacts:
    """Header facts of one image file; never raises for a bad file (`error` says what was wrong).

    DICOM is recognised by suffix (.dcm, .dicom) or by the "DICM" marker when Pillow cannot identify
    the file, as `pneumo.data.readers.read_image` does.
    """
    path = str(path)
    try:
        if path.lower().endswith(DICOM_SUFFIXES):
            return _dicom_facts(path)
        try:
            return _pillow_facts(path)
        except Exception:
            if has_dicom_magic(path):
                return _dicom_facts(path)
            raise
    except Exception as error:  # a bad file is a fact too
        return FileFacts(path, "unreadable", 0, 0, "", None, "", f"{type(error).__name__}: {error}")


def _pillow_facts(path: str) -> FileFacts:
    from PIL import Image

    with Image.open(path) as image:  # lazy: header only
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION, 1) in _TURNED:
            width, height = height, width
        bits = getattr(image, "bits", None) or _MODE_BITS.get(image.mode)
        return FileFacts(path, str(image.format), width, height, image.mode, bits, str(image.format))


def _dicom_facts(path: str) -> FileFacts:
    import pydicom

    dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    if "Rows" not in dataset or "Columns" not in dataset:
        raise ValueError("no Rows/Columns: not a DICOM image")
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    bits = dataset.get("BitsStored") or dataset.get("BitsAllocated")
    return FileFacts(path, "DICOM", int(dataset.Columns), int(dataset.Rows),
                     str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
                     int(bits) if bits else None, syntax.name if syntax else "no transfer syntax")


def summarize(facts: Sequence[FileFacts]) -> dict[str, Any]:
    """One split's distributions: counts, width/height/aspect min-median-max, and counts per format,
    mode, bit depth and encoding (keys as strings, so the summary is JSON as it is)."""
    readable = [fact for fact in facts if fact.error is None]

    def spread(values: list[float], digits: int = 0) -> dict[str, float] | None:
        if not values:
            return None
        return {name: round(float(value), digits) if digits else int(value) for name, value in
                (("min", min(values)), ("median", statistics.median(values)), ("max", max(values)))}

    return {"files": len(facts), "unreadable": len(facts) - len(readable),
            "width": spread([fact.width for fact in readable]), "height": spread([fact.height for fact in readable]),
            "aspect": spread([fact.aspect for fact in readable], 2),
            "format": _counts(fact.format for fact in facts), "mode": _counts(fact.mode for fact in readable),
            "bits": _counts(str(fact.bits) for fact in readable),
            "encoding": _counts(fact.encoding for fact in readable)}


def _counts(values: Any) -> dict[str, int]:
    return dict(sorted(Counter(values).items(), key=lambda item: (-item[1], item[0])))
