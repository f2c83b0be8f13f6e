"""Modality and VOI lookup tables as archives hold them: entries read whatever the VR, output depth from the data.

A LUT item (PS3.3 C.11.1.1.1 Modality LUT, C.11.2.1.1 VOI LUT) is a LUT Descriptor [number of entries,
first stored value mapped, bits per entry] and LUT Data. Vendors get all three descriptor values and
the data's VR wrong; the field's viewers read such tables anyway, and so does `read_lut`, with a note
per repair (see `dicom_header`):

- bits per entry: the output is scaled by the depth the entries actually reach, not the declared
  one. Agfa CRs write 16 for 12-bit data (a near-black image if trusted); others write 8 over values
  above 255. cornerstone ("We don't trust the voiLUT.numBitsPerEntry, mainly thanks to Agfa!",
  generateNonLinearVOILUT), dcmtk (dcm2pnm +Mm/+Mv "determine bits per table entry automatically",
  `DiLookupTable::checkBits`) and dicom-rs (PR #825) do the same. As in dcmtk the depth is kept
  within 8..16 bits.
- number of entries: 0 means 65536 (PS3.3 C.11.1.1.1); when the data hold another count, the data's
  count is used (dcmtk: "invalid value for 'NumberOfTableEntries' ... assuming").
- LUT Data as bytes (OW, OB, UN, implicit VR): 16-bit words in the file's byte order when the bytes
  hold two per entry, else one byte per entry, the "format equivalent to 8 bits allocated" of an
  8-bit table (dcmtk `DiLookupTable::checkTable`); as numbers with half the entries for an 8-bit
  table: two entries per 16-bit value, low byte first; as signed numbers (VR SS): entries are
  always unsigned (cornerstoneWADOImageLoader issue #259), so 65536 is added to negatives.
- empty LUT Data: the table is ignored (dcmtk; pydicom PR #2251), the next VOI step is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["Lut", "read_lut"]

_MIN_DEPTH, _MAX_DEPTH = 8, 16  # dcmtk's MIN_TABLE_ENTRY_SIZE / MAX_TABLE_ENTRY_SIZE


@dataclass(frozen=True)
class Lut:
    """A lookup table: `table[v - first_mapped]`, inputs clipped to its ends; entries use `depth` bits."""

    first_mapped: int
    table: np.ndarray  # int64 (entries,), each in 0 .. 2**depth - 1
    depth: int

    @property
    def top(self) -> float:
        """The largest value the entries' depth can hold, 2**depth - 1: the output range's top."""
        return float(2 ** self.depth - 1)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """float64 array of `values`' shape: inputs below first_mapped take the first entry, above the last
        the last (PS3.3 C.11.2.1.1); non-integer inputs (a rescale's output) are rounded."""
        index = np.rint(values).astype(np.int64) - self.first_mapped
        return self.table[np.clip(index, 0, len(self.table) - 1)].astype(np.float64)


def read_lut(ds: Dataset, item: Dataset, name: str, notes: list[str]) -> Lut | None:
    """The LUT of one Modality/VOI LUT Sequence item, repaired; None when it holds no usable table.

    `name` ("VOI LUT", "Modality LUT") prefixes the notes. `ds` gives the byte order of LUT Data
    stored as bytes.
    """
    descriptor = item.get("LUTDescriptor")
    if descriptor is None or "LUTData" not in item or len(descriptor) != 3:
        notes.append(f"{name} without LUT Data or a 3-value LUT Descriptor: ignored")
        return None
    entries, first_mapped, declared = (int(v) for v in descriptor)
    if entries < 0:  # the first value read as SS; pydicom repairs this for files it reads (issue #942)
        entries += 65536
    entries = entries or 65536  # PS3.3 C.11.1.1.1: 0 means 2**16 entries
    data = _entries(ds, item, entries, declared, name, notes)
    if data.size == 0:
        notes.append(f"{name} with empty LUT Data: ignored, as dcmtk does")
        return None
    if len(data) != entries and not (len(data) == entries + 1 and entries % 2):  # + 1: padding to even
        notes.append(f"{name} Descriptor says {entries} entries but the LUT Data hold {len(data)}: "
                     "the data's count used, as dcmtk does")
        entries = len(data)
    table = data[:entries]
    depth = _depth(table, declared)
    if depth != declared:
        notes.append(f"{name} Descriptor declares {declared} bits per entry but the entries reach "
                     f"{int(table.max())} ({depth} bits): output scaled by {depth} bits, as cornerstone, "
                     "dcmtk (+Mv/+Mm) and dicom-rs do")
    return Lut(first_mapped, table, depth)


def _depth(table: np.ndarray, declared: int) -> int:
    """Bits the entries reach (the largest entry's bit length), within 8..16; a flat zero table keeps the
    declared depth when that is valid."""
    top = int(table.max())
    if top == 0:
        return declared if _MIN_DEPTH <= declared <= _MAX_DEPTH else _MAX_DEPTH
    return min(max(top.bit_length(), _MIN_DEPTH), _MAX_DEPTH)


def _entries(ds: Dataset, item: Dataset, entries: int, declared: int, name: str, notes: list[str]) -> np.ndarray:
    """LUT Data as unsigned int64 entries, whatever VR and packing they were written with."""
    element = item["LUTData"]
    value = element.value
    if element.VR not in ("US", "OW", "US or OW"):
        notes.append(f"{name} Data with VR {element.VR} (the standard says US or OW): read as unsigned entries")
    if value is None:
        return np.zeros(0, dtype=np.int64)
    if isinstance(value, (bytes, bytearray)):
        if len(value) >= 2 * entries or (declared > 8 and len(value) < entries):
            order = "<" if ds.file_meta.TransferSyntaxUID.is_little_endian else ">"
            return np.frombuffer(value, dtype=f"{order}u2", count=len(value) // 2).astype(np.int64)
        if declared != 8:
            notes.append(f"{name} Data hold {len(value)} bytes for {entries} entries of {declared} bits: read "
                         "as one byte per entry")
        return np.frombuffer(value, dtype=np.uint8).astype(np.int64)
    data = np.atleast_1d(np.asarray(list(value) if hasattr(value, "__iter__") else value, dtype=np.int64))
    if (data < 0).any():
        notes.append(f"{name} Data read as signed (VR {element.VR}): entries are unsigned, 65536 added to the "
                     "negative ones")
        data = data % 65536
    if declared == 8 and entries > 1 and len(data) == (entries + 1) // 2:
        # 8-bit entries packed two per 16-bit value, low byte first (dcmtk DiLookupTable::checkTable)
        data = np.stack([data & 0xFF, data >> 8], axis=1).reshape(-1)[:entries]
    return data
