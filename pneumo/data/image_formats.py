"""What every image reader shares: the accepted file names, the DICOM marker, the bad-file error.

Kept apart from the readers so that the Pillow reader, the DICOM reader and the one `read_image`
entry all import it and none of them imports another (no import circle).
"""
from __future__ import annotations

from pathlib import Path

# Bump when decoding changes, so on-disk caches built by an older decoder are not reused.
DECODER_VERSION = 4
# File names every image reader accepts (compared lower-case); .dcm/.dicom are read with pydicom.
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
DICOM_VOI_CHOICES = ("auto", "none")
# A DICOM file (PS3.10 7.1) has a 128-byte preamble, then these four bytes.
_DICOM_MAGIC, _DICOM_MAGIC_AT = b"DICM", 128


class BadImageError(ValueError):
    """A file that cannot be read as an image; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def has_dicom_magic(path: str | Path) -> bool:
    """Whether the file carries the DICOM "DICM" marker at byte 128 (PS3.10 file format)."""
    with open(path, "rb") as file:
        file.seek(_DICOM_MAGIC_AT)
        return file.read(len(_DICOM_MAGIC)) == _DICOM_MAGIC
