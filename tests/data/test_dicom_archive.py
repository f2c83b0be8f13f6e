"""DICOMs as real archives hold them: decoded as the field's viewers show them, with a warning, or refused.

Every file is written here with pydicom, bent the way vendors and old archives bend the standard. A
decoded file must give the picture the same file with a correct header gives (or the standard's formula),
and exactly one DicomWorkaroundWarning naming the file and the workaround; a correct file gives none.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from pneumo.data.dicom_reader import DicomWorkaroundWarning
from pneumo.data.image_formats import BadImageError
from pneumo.data.readers import read_image

SIDE = 64  # decoded at the source size: the resize is an identity (tests/data/test_dicom.py checks it)


# ---- writing files -----------------------------------------------------------------------------------
def _dataset(pixels: np.ndarray, *, bits_stored: int | None = None, **attributes) -> Dataset:
    """A 12-bit-style CR data set with File Meta Information; `attributes` add or override elements."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ComputedRadiographyImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = "archive", "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    """An element written byte for byte, as a vendor wrote it (explicit VR little endian)."""
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _lut_item(table: np.ndarray, declared: int, vr: str = "US", entries: int | None = None) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(table) if entries is None else entries, 0, declared]
    if vr in ("US", "SS"):
        item.add_new("LUTData", vr, [int(v) for v in table])
    else:
        item.add_new("LUTData", vr, table.tobytes())
    return item


def _ramp() -> np.ndarray:
    """The voi-lut-depth case's picture: a horizontal ramp 0..4095, 64 x 64, 12 bits in 16."""
    return np.tile(np.rint(np.arange(SIDE) * 4095 / (SIDE - 1)).astype(np.uint16), (SIDE, 1))


def _values() -> np.ndarray:
    """Every 12-bit value once: 0..4095 row by row."""
    return np.arange(4096, dtype=np.uint16).reshape(SIDE, SIDE)


def _s_curve() -> np.ndarray:
    """A 4096-entry S-shaped VOI LUT whose entries span exactly 0..4095 (12 bits)."""
    s = 1.0 / (1.0 + np.exp(-(np.arange(4096) - 2048.0) / 400.0))
    return np.rint((s - s[0]) / (s[-1] - s[0]) * 4095).astype(np.int64)


def _by_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """The no-VOI display: values over 0 .. 2**bits - 1 to 0..255."""
    return np.rint(values / (2 ** bits - 1) * 255).astype(np.uint8)


def _linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window to 0..255, written out."""
    return np.rint(np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255, 0, 255)).astype(np.uint8)


# ---- decoding ------------------------------------------------------------------------------------------
def _decode(path: Path, voi: str = "auto") -> tuple[np.ndarray, list[str]]:
    """The decoded image and the DicomWorkaroundWarning messages it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(path, SIDE if "odd" not in path.name else SIDE - 1, dicom_voi=voi)[0]
    return image, [str(w.message) for w in caught if issubclass(w.category, DicomWorkaroundWarning)]


def _one_warning(messages: list[str], path: Path, *patterns: str) -> None:
    """One warning for the file, naming it and matching each pattern."""
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"{path}: decoded with ")
    for pattern in patterns:
        assert re.search(pattern, messages[0]), (pattern, messages[0])


def _refused(path: Path, reason: str) -> None:
    with pytest.raises(BadImageError, match=reason) as error:
        read_image(path, SIDE)
    assert error.value.path == str(path)


# ---- 1. LUT depth, entry count, LUT Data VR --------------------------------------------------------------
def test_voi_lut_declaring_16_bits_over_12_bit_data_spans_0_to_255(tmp_path):
    """The voi-lut-depth case: descriptor [4096, 0, 16], entries never above 4095 (an Agfa CR defect)."""
    table = _s_curve()
    wrong = _save(_dataset(_ramp(), bits_stored=12, VOILUTSequence=[_lut_item(table, 16)]), tmp_path / "d16.dcm")
    right = _save(_dataset(_ramp(), bits_stored=12, VOILUTSequence=[_lut_item(table, 12)]), tmp_path / "d12.dcm")
    decoded, messages = _decode(wrong)
    reference, clean = _decode(right)
    assert decoded.min() == 0 and decoded.max() == 255  # was 0..16 when the descriptor was trusted
    assert np.abs(decoded.astype(int) - reference.astype(int)).max() <= 1
    assert np.array_equal(reference, _by_bits(table[_ramp()], 12))
    _one_warning(messages, wrong, r"VOI LUT Descriptor declares 16 bits per entry", r"reach 4095 \(12 bits\)")
    assert clean == []


def test_voi_lut_declaring_8_bits_over_larger_entries_is_scaled_by_what_they_reach(tmp_path):
    table = _s_curve()
    path = _save(_dataset(_ramp(), bits_stored=12, VOILUTSequence=[_lut_item(table, 8)]), tmp_path / "d8.dcm")
    decoded, messages = _decode(path)
    assert np.array_equal(decoded, _by_bits(table[_ramp()], 12))
    _one_warning(messages, path, r"declares 8 bits per entry but the entries reach 4095 \(12 bits\)")


@pytest.mark.parametrize("declared", [16, 12])
def test_modality_lut_depth_comes_from_its_entries(tmp_path, declared):
    """16 over 12-bit entries would squeeze the no-VOI display into 0..16; 12 (valid for pydicom's VOI LUT but
    'uint12 not understood' in its apply_modality_lut, pydicom issue #2317) decodes without a warning."""
    table = _s_curve()
    path = _save(_dataset(_ramp(), bits_stored=12, ModalityLUTSequence=[_lut_item(table, declared)]),
                 tmp_path / f"mlut{declared}.dcm")
    decoded, messages = _decode(path, voi="none")
    assert np.array_equal(decoded, _by_bits(table[_ramp()], 12))
    if declared == 16:
        _one_warning(messages, path, r"Modality LUT Descriptor declares 16 bits")
    else:
        assert messages == []


def test_descriptor_entry_count_0_means_65536(tmp_path):
    """PS3.3 C.11.1.1.1: 2**16 entries are written as 0; LUT Data then must be OW (US cannot hold 128 KiB)."""
    stored = np.linspace(0, 65535, SIDE * SIDE).astype(np.uint16).reshape(SIDE, SIDE)
    table = (np.arange(65536) >> 4).astype("<u2")
    path = _save(_dataset(stored, VOILUTSequence=[_lut_item(table, 12, vr="OW", entries=0)]), tmp_path / "n0.dcm")
    decoded, messages = _decode(path)
    assert np.array_equal(decoded, _by_bits(stored >> 4, 12))
    assert messages == []


def test_an_entry_count_the_data_do_not_hold_gives_way_to_the_data(tmp_path):
    table = _s_curve().astype("<u2")
    path = _save(_dataset(_ramp(), bits_stored=12, VOILUTSequence=[_lut_item(table, 12, vr="OW", entries=0)]),
                 tmp_path / "n0_short.dcm")
    decoded, messages = _decode(path)
    assert np.array_equal(decoded, _by_bits(table[_ramp()], 12))
    _one_warning(messages, path, r"says 65536 entries but the LUT Data hold 4096")


def _lut_data(kind: str) -> tuple[Dataset, np.ndarray, int, str | None]:
    """(item, the table it means, output bits, expected warning) for LUT Data written with the wrong VR."""
    if kind == "OB bytes, 8-bit":
        table = np.arange(4096) // 16
        return _lut_item(table.astype(np.uint8), 8, vr="OB"), table, 8, r"VR OB \(the standard says US or OW\)"
    if kind == "OB words, 12-bit":
        table = _s_curve()
        return _lut_item(table.astype("<u2"), 12, vr="OB"), table, 12, r"VR OB"
    if kind == "SS, 16-bit":
        table = _s_curve() * 16  # 0..65520: above 32767 they are negative as SS
        return _lut_item(table.astype(np.uint16).view(np.int16), 16, vr="SS"), table, 16, r"read as signed \(VR SS\)"
    table = np.arange(4096) // 16  # "US packed": 8-bit entries two per 16-bit value, the standard's 8-bit format
    return _lut_item(table[0::2] | table[1::2] << 8, 8, entries=4096), table, 8, None


@pytest.mark.parametrize("kind", ["OB bytes, 8-bit", "OB words, 12-bit", "SS, 16-bit", "US packed, 8-bit"])
def test_lut_data_in_any_vr_and_packing_reads_as_its_entries(tmp_path, kind):
    item, table, bits, warning = _lut_data(kind)
    path = _save(_dataset(_ramp(), bits_stored=12, VOILUTSequence=[item]), tmp_path / "lut_vr.dcm")
    decoded, messages = _decode(path)
    assert np.array_equal(decoded, _by_bits(table[_ramp()], bits))
    if warning is None:
        assert messages == []
    else:
        _one_warning(messages, path, warning)


def test_an_empty_voi_lut_gives_way_to_the_window(tmp_path):
    item = Dataset()
    item.LUTDescriptor, item.LUTData = [4096, 0, 12], b""
    item["LUTData"].VR = "OW"
    path = _save(_dataset(_values(), bits_stored=12, VOILUTSequence=[item], WindowCenter=2048, WindowWidth=1024),
                 tmp_path / "empty_lut.dcm")
    decoded, messages = _decode(path)
    assert np.array_equal(decoded, _linear(_values().astype(float), 2048, 1024))
    _one_warning(messages, path, r"VOI LUT with empty LUT Data: ignored")


# ---- 2. header fields missing or wrong that a reader can infer ----------------------------------------
def _header_case(kind: str) -> tuple[Dataset, np.ndarray, str]:
    """(data set, the no-VOI display it must decode to, expected warning) for one header defect."""
    values = _values()
    expected = _by_bits(values, 12)
    if kind == "no Photometric Interpretation":
        ds = _dataset(values, bits_stored=12)
        del ds.PhotometricInterpretation
        return ds, expected, r"no Photometric Interpretation \(0028,0004\): MONOCHROME2 assumed"
    if kind == "Photometric Interpretation 'monochrome 1'":
        ds = _dataset(values, bits_stored=12)
        ds[0x00280004] = _raw(0x00280004, "CS", b"monochrome 1")
        return ds, 255 - expected, r"'monochrome 1' read as MONOCHROME1"
    if kind == "no Bits Stored":
        ds = _dataset(values, bits_stored=12)
        del ds.BitsStored, ds.HighBit
        return ds, expected, r"Bits Stored missing: 12 inferred from the pixel values \(largest 4095\)"
    if kind == "Bits Stored above Bits Allocated":
        return _dataset(values, bits_stored=12, BitsStored=20), expected, r"Bits Stored 20 .*: 12 inferred"
    if kind == "no Bits Allocated":
        ds = _dataset(values, bits_stored=12)
        del ds.BitsAllocated
        return ds, expected, r"no Bits Allocated \(0028,0100\): 16 inferred from the Pixel Data length"
    if kind == "High Bit 15, values in the low 12 bits":
        return _dataset(values, bits_stored=12, HighBit=15), expected, r"High Bit 15 disagrees .* low 12 bits"
    if kind == "High Bit 15, values in the high 12 bits":
        return (_dataset(values << 4, bits_stored=12, HighBit=15), expected,
                r"low 4 bits are 0, so the values were read from bits 4..15")
    if kind == "no High Bit":
        ds = _dataset(values, bits_stored=12)
        del ds.HighBit
        return ds, expected, r"High Bit missing or 0 with Bits Stored 12: 11 assumed"
    if kind == "no Pixel Representation":
        ds = _dataset(values, bits_stored=12)
        del ds.PixelRepresentation
        return ds, expected, r"no Pixel Representation \(0028,0103\): unsigned \(0\) assumed"
    if kind == "Rescale Slope 0":
        return (_dataset(values, bits_stored=12, RescaleSlope=0, RescaleIntercept=0), expected,
                r"Rescale Slope 0 .* slope 1 assumed")
    ds = _dataset(values, bits_stored=12)  # "no Samples per Pixel"
    del ds.SamplesPerPixel
    return ds, expected, r"no Samples per Pixel \(0028,0002\): 1 assumed"


@pytest.mark.parametrize("kind", [
    "no Photometric Interpretation", "Photometric Interpretation 'monochrome 1'", "no Samples per Pixel",
    "no Bits Stored", "Bits Stored above Bits Allocated", "no Bits Allocated", "High Bit 15, values in the low 12 bits",
    "High Bit 15, values in the high 12 bits", "no High Bit", "no Pixel Representation", "Rescale Slope 0",
])
def test_header_fields_a_reader_can_infer_decode_with_a_warning(tmp_path, kind):
    ds, expected, warning = _header_case(kind)
    path = _save(ds, tmp_path / "header.dcm")
    decoded, messages = _decode(path, voi="none")
    assert np.array_equal(decoded, expected)
    _one_warning(messages, path, warning)


def _signed_case(tmp_path: Path, name: str, cells: np.ndarray, representation: int) -> Path:
    """A 12-bit signed-looking image with a rescale and a window, as a CT-like export has."""
    return _save(_dataset(cells, bits_stored=12, PixelRepresentation=representation, RescaleSlope=2,
                          RescaleIntercept=-24, WindowCenter=0, WindowWidth=4000), tmp_path / name)


def test_sign_extended_pixels_labelled_unsigned_are_read_as_signed(tmp_path):
    signed = (np.arange(4096) - 2048).reshape(SIDE, SIDE)
    extended = signed.astype(np.int16).view(np.uint16)  # two's complement, sign copied into bits 12..15
    expected = _linear(signed * 2.0 - 24, 0, 4000)  # PS3.3 C.11.1.1.2 rescale, then C.11.2.1.2.1 window
    mislabelled = _signed_case(tmp_path, "pr0.dcm", extended, 0)
    decoded, messages = _decode(mislabelled)
    assert np.array_equal(decoded, expected)
    _one_warning(messages, mislabelled, r"Pixel Representation 0 .* copy bit 11 .*read as signed")
    # The header is trusted as written when it says signed, with unused bits set or clear (PS3.5 8.1.1).
    for name, cells in (("pr1_extended.dcm", extended), ("pr1_clear.dcm", extended & 0x0FFF)):
        decoded, messages = _decode(_signed_case(tmp_path, name, cells, 1))
        assert np.array_equal(decoded, expected) and messages == []


def test_unsigned_pixels_with_clear_high_bits_stay_unsigned(tmp_path):
    """Values above 2047 with bits 12..15 clear: no sign extension, so Pixel Representation 0 holds."""
    path = _save(_dataset(_values(), bits_stored=12), tmp_path / "unsigned.dcm")
    decoded, messages = _decode(path, voi="none")
    assert np.array_equal(decoded, _by_bits(_values(), 12)) and messages == []


def test_rescale_intercept_without_slope_uses_slope_1(tmp_path):
    """pydicom's apply_modality_lut ignores a lone intercept; cornerstone takes the slope as 1."""
    path = _save(_dataset(_values(), bits_stored=12, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=2000),
                 tmp_path / "intercept_only.dcm")
    decoded, messages = _decode(path)
    assert np.array_equal(decoded, _linear(_values() - 1024.0, 0, 2000))
    _one_warning(messages, path, r"Rescale Intercept without Rescale Slope: slope 1 assumed")


@pytest.mark.parametrize("bad_width", [0, -400])
def test_an_invalid_first_window_gives_way_to_the_next(tmp_path, bad_width):
    path = _save(_dataset(_values(), bits_stored=12, WindowCenter=[40, 1500], WindowWidth=[bad_width, 2000]),
                 tmp_path / "windows.dcm")
    decoded, messages = _decode(path)
    assert np.array_equal(decoded, _linear(_values().astype(float), 1500, 2000))
    _one_warning(messages, path, rf"window 1 \(center 40, width {bad_width}\) .* ignored")


def test_only_invalid_windows_decode_as_if_there_were_none(tmp_path):
    path = _save(_dataset(_values(), bits_stored=12, WindowCenter=2048, WindowWidth=-1), tmp_path / "no_window.dcm")
    decoded, messages = _decode(path)
    assert np.array_equal(decoded, _by_bits(_values(), 12))
    _one_warning(messages, path, r"window 1 .* ignored")


def test_window_values_written_as_text_with_backslashes_and_decimal_commas(tmp_path):
    ds = _dataset(_values(), bits_stored=12)
    ds[0x00281050] = _raw(0x00281050, "ST", b"1500\\40")  # one ST text holding two centers
    ds[0x00281051] = _raw(0x00281051, "DS", b"2000,0\\400 ")  # a decimal comma pydicom leaves as text
    path = _save(ds, tmp_path / "text_window.dcm")
    decoded, messages = _decode(path)
    assert np.array_equal(decoded, _linear(_values().astype(float), 1500, 2000))
    _one_warning(messages, path, r"WindowCenter stored as one text value '1500\\\\40' \(VR ST\)",
                 r"WindowWidth '2000,0' has a decimal comma: read as 2000")


def test_an_unknown_voi_lut_function_is_read_as_linear(tmp_path):
    path = _save(_dataset(_values(), bits_stored=12, WindowCenter=2048, WindowWidth=1024, VOILUTFunction="LINEARX"),
                 tmp_path / "function.dcm")
    decoded, messages = _decode(path)
    assert np.array_equal(decoded, _linear(_values().astype(float), 2048, 1024))
    _one_warning(messages, path, r"VOI LUT Function 'LINEARX' .* LINEAR used")


# ---- 3. files pydicom reads only with force=True ------------------------------------------------------
@pytest.mark.parametrize("implicit, syntax", [(True, "Implicit VR Little Endian"),
                                              (False, "Explicit VR Little Endian")])
def test_a_bare_acr_nema_style_data_set_named_dcm_decodes(tmp_path, implicit, syntax):
    """No preamble, no 'DICM', no File Meta Information, no Photometric Interpretation or Samples per Pixel."""
    ds = _dataset(_values(), bits_stored=12, WindowCenter=2048, WindowWidth=1024)
    del ds.file_meta, ds.PhotometricInterpretation, ds.SamplesPerPixel
    path = tmp_path / "IM00001.dcm"
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM" and path.read_bytes()[:2] == b"\x08\x00"
    decoded, messages = _decode(path)
    assert np.array_equal(decoded, _linear(_values().astype(float), 2048, 1024))
    _one_warning(messages, path, r"no 128-byte preamble and 'DICM' marker", rf"{syntax} inferred",
                 r"no Photometric Interpretation", r"no Samples per Pixel")


def _file_without_transfer_syntax(path: Path, ds: Dataset) -> Path:
    """Preamble, 'DICM' and File Meta Information, but no (0002,0010) Transfer Syntax UID."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, meta, enforce_standard=False)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, ds)
    path.write_bytes(b"\0" * 128 + b"DICM" + head.getvalue() + body.getvalue())
    return path


def test_file_meta_without_transfer_syntax_decodes_as_implicit_little_endian(tmp_path):
    ds = _dataset(_values(), bits_stored=12)
    path = _file_without_transfer_syntax(tmp_path / "no_ts.dcm", ds)
    decoded, messages = _decode(path, voi="none")
    assert np.array_equal(decoded, _by_bits(_values(), 12))
    _one_warning(messages, path, r"no Transfer Syntax UID \(0002,0010\): Implicit VR Little Endian inferred")


def test_compressed_pixels_without_transfer_syntax_are_refused(tmp_path):
    ds = _dataset(_values(), bits_stored=12)
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(62)])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    del ds.file_meta
    path = tmp_path / "bare_compressed.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    _refused(path, r"compressed \(encapsulated\) Pixel Data but no Transfer Syntax UID")


def test_random_bytes_that_parse_as_a_bare_data_set_are_still_not_dicom(tmp_path):
    """force=True parses almost anything; without Rows, Columns and Pixel Data it is no image."""
    ds = Dataset()
    ds.PatientID, ds.Modality = "not-an-image", "SR"
    path = tmp_path / "report.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    _refused(path, r"not a DICOM file \(no 'DICM' marker .* no Rows, Columns and Pixel Data\)")


# ---- 4. Pixel Data length and dimensions ----------------------------------------------------------------
def test_one_padding_byte_after_an_odd_pixel_count_is_the_standard(tmp_path):
    picture = np.arange(63 * 63, dtype=np.uint32).reshape(63, 63).astype(np.uint8)
    path = _save(_dataset(picture), tmp_path / "odd_8_bit.dcm")
    decoded, messages = _decode(path)
    assert np.array_equal(decoded, picture) and messages == []


def test_pixel_data_longer_than_the_image_decodes_from_its_start(tmp_path):
    ds = _dataset(_values(), bits_stored=12)
    ds.PixelData = _values().tobytes() + b"\0" * 6
    path = _save(ds, tmp_path / "long.dcm")
    decoded, messages = _decode(path, voi="none")
    assert np.array_equal(decoded, _by_bits(_values(), 12))
    _one_warning(messages, path, r"Pixel Data is 6 bytes longer than 64x64x2 needs")


def _bad_geometry(kind: str) -> Dataset:
    ds = _dataset(_values(), bits_stored=12)
    if kind == "truncated":
        ds.PixelData = _values().tobytes()[:-100]
    elif kind == "two images' worth":
        ds.Rows = 32
    elif kind == "no size":
        ds.Rows = 0
    elif kind == "12 bits allocated":
        ds.BitsAllocated = 12
    else:  # "no Bits Allocated, odd length"
        del ds.BitsAllocated
        ds.PixelData = _values().tobytes()[:-1000]
    return ds


@pytest.mark.parametrize("kind, reason", [
    ("truncated", r"Pixel Data holds 8092 bytes but 64 rows x 64 columns x 2 byte\(s\) need 8192: the file is trunc"),
    ("two images' worth", r"Pixel Data holds 2 images' worth .* without Number of Frames"),
    ("no size", r"Rows=0, Columns=64: the header gives the image no size"),
    ("12 bits allocated", r"BitsAllocated=12 \(12-bit packed pixels, retired ACR-NEMA\)"),
    ("no Bits Allocated, odd length", r"no Bits Allocated .* fits neither 8 nor 16 bits"),
])
def test_pixel_data_that_does_not_fit_the_header_is_refused(tmp_path, kind, reason):
    _refused(_save(_bad_geometry(kind), tmp_path / "geometry.dcm"), reason)
