"""The stored values of a DICOM image as archives hold them: geometry checked, bit layout as the pixels prove it.

`stored_values` checks uncompressed Pixel Data against Rows x Columns x Bits Allocated before decoding
(so a cut file is refused with the byte counts, not a decoder's message), infers a missing Bits
Allocated from that length and a missing or impossible Bits Stored from the values, and repairs the bit
layout where the raw pixel cells prove the header wrong (High Bit, a sign-extended image labelled
unsigned). Repairs append notes (see `dicom_header`); what cannot be decoded raises `BadImageError`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumo.data.dicom_header import header_int
from pneumo.data.image_formats import BadImageError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["stored_values"]

# Bit depths an inferred Bits Stored is rounded up to: the depths the 16-bit PNG path of
# `pillow_reader` uses, so a DICOM without Bits Stored is scaled as its PNG export would be.
_DEPTHS = (8, 10, 12, 14, 16)


def stored_values(ds: Dataset, path: str | Path, notes: list[str]) -> np.ndarray:
    """Stored values, integer array (Rows, Columns), after the geometry checks and bit-layout repairs.

    Leaves `ds` consistent with the returned values (Bits Allocated/Stored, High Bit, Pixel
    Representation), so the display range can be read from it. pydicom 3 applies no rescale here.

    Raises:
        BadImageError: no size, Pixel Data shorter than the size needs or holding several images,
            pixel cells other than 8/16/32 bits, more than 16 bits stored, or undecodable data.
    """
    native = not ds.file_meta.TransferSyntaxUID.is_compressed
    allocated = _check_geometry(ds, path, notes, native)
    declared = header_int(ds, "BitsStored")
    bits_known = declared is not None and 1 <= declared <= allocated
    if not bits_known:  # decode the whole cell; the depth is inferred from the values below
        ds.BitsStored, ds.HighBit = allocated, allocated - 1
    stored = _pixel_array(ds, path)
    stored = _bit_layout(ds, stored, notes, native)
    if not bits_known:
        _infer_bits_stored(ds, stored, declared, allocated, path, notes)
    return stored


# ---- geometry --------------------------------------------------------------------------------------
def _check_geometry(ds: Dataset, path: str | Path, notes: list[str], native: bool) -> int:
    """Bits Allocated (inferred from the length when missing); refuses a size the data cannot hold.

    A Pixel Data element longer than needed is decoded from its start: one trailing byte is the
    padding to even length every value gets (PS3.5 7.1.1), more is ignored with a note, as pydicom
    does ("excess padding to be removed"). Two or more images' worth is refused: a multi-frame
    object or a wrong Rows/Columns/Bits Allocated, which no reader can tell apart.
    """
    rows, columns = header_int(ds, "Rows"), header_int(ds, "Columns")
    if not rows or not columns or rows < 0 or columns < 0:
        raise BadImageError(path, f"Rows={rows}, Columns={columns}: the header gives the image no size; "
                                  "re-export the image")
    pixels = rows * columns
    length = len(ds.PixelData) if native else 0
    allocated = header_int(ds, "BitsAllocated")
    if allocated is None:
        allocated = next((bits for bits in (8, 16) if 0 <= length - pixels * bits // 8 <= 1), None)
        if allocated is None:
            raise BadImageError(path, f"no Bits Allocated (0028,0100), and the Pixel Data length ({length} bytes "
                                      f"for {rows}x{columns} pixels) fits neither 8 nor 16 bits; fix the header")
        ds.BitsAllocated = allocated
        notes.append(f"no Bits Allocated (0028,0100): {allocated} inferred from the Pixel Data length "
                     f"({length} bytes for {rows}x{columns} pixels)")
    if allocated not in (8, 16, 32):
        packed = " (12-bit packed pixels, retired ACR-NEMA)" if allocated == 12 else ""
        raise BadImageError(path, f"BitsAllocated={allocated}{packed}: only 8-, 16- or 32-bit pixel cells are "
                                  "read; convert the file to 16 bits allocated (e.g. gdcmconv --raw)")
    if native:
        needed = pixels * allocated // 8
        if length < needed:
            raise BadImageError(path, f"Pixel Data holds {length} bytes but {rows} rows x {columns} columns x "
                                      f"{allocated // 8} byte(s) need {needed}: the file is truncated or corrupt, "
                                      "or Rows/Columns/Bits Allocated are wrong; re-export or re-download it")
        if length >= 2 * needed:
            raise BadImageError(path, f"Pixel Data holds {length // needed} images' worth ({length} bytes; one "
                                      f"{rows}x{columns} image of {allocated} bits needs {needed}): a multi-frame "
                                      "object without Number of Frames, or wrong Rows/Columns/Bits Allocated; "
                                      "export one frame per file")
        if length - needed > 1:
            notes.append(f"Pixel Data is {length - needed} bytes longer than {rows}x{columns}x{allocated // 8} "
                         "needs: the trailing bytes are ignored, as pydicom does")
    return allocated


def _pixel_array(ds: Dataset, path: str | Path) -> np.ndarray:
    try:
        stored = ds.pixel_array
    except Exception as error:  # noqa: BLE001 - decoders and buffer checks raise many kinds
        raise BadImageError(path, f"pixel data cannot be decoded ({type(error).__name__}: {error}); "
                                  "the file is truncated or corrupt: re-export or re-download it") from error
    if stored.ndim != 2:
        raise BadImageError(path, f"pixel data decodes to shape {stored.shape}, not one grayscale image")
    return stored


# ---- bit layout ------------------------------------------------------------------------------------
def _bit_layout(ds: Dataset, stored: np.ndarray, notes: list[str], native: bool) -> np.ndarray:
    """Repair High Bit and Pixel Representation where the raw (unmasked) pixel cells prove them wrong.

    High Bit shall be Bits Stored - 1 (PS3.3 C.7.6.3.1, Image Pixel Description). pydicom ignores it
    and reads the low Bits Stored bits; dcmtk reads the Bits Stored bits ending at High Bit. When
    High Bit is higher and every pixel's bits below that field are 0, the values evidently sit there
    (the left-aligned cells of old ACR-NEMA exports) and are read there; otherwise High Bit is
    ignored, as pydicom does. Missing or 0 (with Bits Stored > 1): Bits Stored - 1, as dcmtk assumes.

    A Pixel Representation of 0 on cells whose unused high bits copy bit Bits Stored - 1 in every pixel,
    some of them set, is two's complement sign extension, which unsigned data cannot show: such
    pixels are read as signed. The opposite error (signed declared, unsigned data) cannot be told from
    valid signed data, since unused bits need not hold the sign (PS3.5 8.1.1), so the header is kept.
    Compressed data: the raw cells are not at hand; the header is read as pydicom reads it.
    """
    bits, allocated = int(ds.BitsStored), int(ds.BitsAllocated)
    high, signed = header_int(ds, "HighBit"), int(ds.PixelRepresentation) == 1
    if high is None or (high == 0 and bits > 1):
        notes.append(f"High Bit missing or 0 with Bits Stored {bits}: {bits - 1} assumed, as dcmtk does")
        ds.HighBit = high = bits - 1
    if high != bits - 1:
        ds.HighBit = bits - 1
        moved = _at_high_bit(_raw_cells(ds), bits, high, allocated, signed) if native else None
        if moved is not None:
            notes.append(f"High Bit {high} with Bits Stored {bits}: every pixel's low {high + 1 - bits} bits are 0, "
                         f"so the values were read from bits {high + 1 - bits}..{high} as dcmtk does")
            return moved
        notes.append(f"High Bit {high} disagrees with Bits Stored {bits} (PS3.3 C.7.6.3.1 requires Bits Stored "
                     f"- 1): ignored, values read from the low {bits} bits as pydicom does")
        return stored
    if native and not signed and bits < allocated:
        extended = _sign_extended(_raw_cells(ds), bits, allocated)
        if extended is not None:
            ds.PixelRepresentation = 1
            notes.append(f"Pixel Representation 0 (unsigned), but in every pixel bits {bits}..{allocated - 1} copy "
                         f"bit {bits - 1} (two's complement sign extension): read as signed")
            return extended
    return stored


def _raw_cells(ds: Dataset) -> np.ndarray:
    """The uncompressed pixel cells as unsigned integers (Rows, Columns), unused bits included."""
    rows, columns, allocated = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    order = "<" if ds.file_meta.TransferSyntaxUID.is_little_endian else ">"
    cells = np.frombuffer(ds.PixelData, dtype=np.dtype(f"{order}u{allocated // 8}"), count=rows * columns)
    return cells.reshape(rows, columns)  # unsigned, as stored: cheap to test; widened only when repaired


def _at_high_bit(cells: np.ndarray, bits: int, high: int, allocated: int, signed: bool) -> np.ndarray | None:
    """Values taken from bits high-bits+1..high when all pixels' bits below are 0; else None."""
    shift = high + 1 - bits
    if shift <= 0 or high >= allocated or not cells.any() or (cells & ((1 << shift) - 1)).any():
        return None
    values = ((cells >> shift) & ((1 << bits) - 1)).astype(np.int64)
    return _as_signed(values, bits) if signed else values


def _sign_extended(cells: np.ndarray, bits: int, allocated: int) -> np.ndarray | None:
    """Signed values when every cell's unused high bits equal its sign bit and some are set; else None."""
    high = cells >> bits
    if not high.any():  # the common unsigned case: unused bits clear
        return None
    sign = (cells >> (bits - 1)) & 1
    if not np.array_equal(high, sign * ((1 << (allocated - bits)) - 1)):
        return None
    return _as_signed((cells & ((1 << bits) - 1)).astype(np.int64), bits)


def _as_signed(values: np.ndarray, bits: int) -> np.ndarray:
    """Two's complement of `bits`-bit values (int64 in, int64 out)."""
    return np.where(values >= 1 << (bits - 1), values - (1 << bits), values)


def _infer_bits_stored(ds: Dataset, stored: np.ndarray, declared: int | None, allocated: int,
                       path: str | Path, notes: list[str]) -> None:
    """Bits Stored from the values: the smallest of 8/10/12/14/16 bits that holds the largest value.

    Signed values keep the whole cell (their range cannot be told from the values' span).
    """
    top = int(stored.max()) if stored.size else 0
    if int(ds.PixelRepresentation) == 1:
        bits = allocated
    else:
        bits = min(next((b for b in _DEPTHS if top < 1 << b), allocated), allocated)
    if bits > 16:
        raise BadImageError(path, f"BitsStored={declared} is invalid and the values need {bits} bits: only integer "
                                  "grayscale up to 16 bits is read; re-export the image as 8-16 bit MONOCHROME2")
    ds.BitsStored, ds.HighBit = bits, bits - 1
    what = "missing" if declared is None else f"{declared} (not within 1..Bits Allocated {allocated})"
    notes.append(f"Bits Stored {what}: {bits} inferred from the pixel values (largest {top}), rounded up to "
                 "8/10/12/14/16 bits as the PNG reader does")
