"""DICOM radiographs decode to the picture a viewer shows, through the same path as JPEGs."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (HTJ2KLossless, ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage,
                         generate_uid)

from pneumo.data.cache import decode_all
from pneumo.data.datamodule import ChestXrayDataModule
from pneumo.data.dicom_reader import DicomWorkaroundWarning
from pneumo.data.image_formats import BadImageError
from pneumo.data.readers import read_image

SIDE = 64  # source side = decoded side: Pillow's resize to the same size is an identity (checked below)


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                syntax: str = ExplicitVRLittleEndian, pixel_data: bytes | None = None, **attributes) -> Path:
    """A minimal secondary-capture file; `attributes` adds or overrides header elements."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = "test", "OT"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    ds.PixelData = pixel_data if pixel_data is not None else pixels.tobytes()
    if pixel_data is not None:  # encapsulated (compressed) data
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _picture(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth gradient with texture: full contrast, JPEG-friendly, no two rows alike."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    base = 40 + 170 * (rows / shape[0]) * (0.5 + 0.5 * np.sin(cols / 7.0))
    noise = np.random.default_rng(seed).normal(0, 6, shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _ramp_12_bit() -> np.ndarray:
    return np.arange(4096, dtype=np.uint16).reshape(SIDE, SIDE)  # every 12-bit value once


def test_resizing_to_the_same_size_is_an_identity():
    """The exact comparisons below decode at the source size; they rely on this."""
    picture = _picture((SIDE, SIDE))
    same = np.asarray(Image.fromarray(picture).resize((SIDE, SIDE), Image.Resampling.BILINEAR))
    assert np.array_equal(same, picture)


def test_monochrome1_decodes_as_the_inverse_of_monochrome2(tmp_path):
    picture = _picture((SIDE, SIDE))
    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", picture), SIDE)[0]
    mono1 = read_image(write_dicom(tmp_path / "m1.dcm", picture, photometric="MONOCHROME1"), SIDE)[0]
    assert np.array_equal(mono2, picture)  # 8 bits stored: 0..255 is the display range as is
    assert np.array_equal(mono1.astype(int), 255 - picture.astype(int))


def test_window_on_rescaled_12_bit_values_matches_the_standard_formula(tmp_path):
    stored = _ramp_12_bit()
    # Two alternative windows: the first is the default one.
    path = write_dicom(tmp_path / "ct_like.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024,
                       WindowCenter=[1500, 40], WindowWidth=[2000, 400])
    decoded = read_image(path, SIDE)[0]

    # PS3.3 C.11.2.1.2.1, written out: x = slope * stored + intercept; c = 1500, w = 2000.
    x = stored.astype(np.float64) * 2 - 1024
    c, w = 1500.0, 2000.0
    expected = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0,
                        np.where(x > c - 0.5 + (w - 1) / 2, 255.0, ((x - (c - 0.5)) / (w - 1) + 0.5) * 255))
    assert np.array_equal(decoded, np.rint(expected).astype(np.uint8))
    # Hand-checked points: x=500 is the window's lower edge, x=1500 its centre, x=2500 above it.
    assert decoded.flat[762] == 0 and decoded.flat[1262] == 128 and decoded.flat[1763] == 255
    assert decoded.flat[1000] == 61  # x = 976: ((976 - 1499.5) / 1999 + 0.5) * 255 = 60.7


def test_voi_none_scales_by_the_bits_stored(tmp_path):
    stored = _ramp_12_bit()
    path = write_dicom(tmp_path / "ct_like.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024,
                       WindowCenter=1500, WindowWidth=2000)
    decoded = read_image(path, SIDE, dicom_voi="none")[0]
    # The rescaled range of 0..4095 is -1024..7166; stored / 4095 of it is the position in that range.
    assert np.array_equal(decoded, np.rint(stored / 4095 * 255).astype(np.uint8))
    assert not np.array_equal(decoded, read_image(path, SIDE, dicom_voi="auto")[0])


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_a_voi_lut_is_scaled_by_its_output_depth(tmp_path, vr):
    """An 8-bit VOI LUT with 4096 entries: pydicom 3.0.2's apply_voi wraps indices past 255."""
    stored = _ramp_12_bit()
    table = np.arange(4096) // 16
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.add_new("LUTData", vr, table.tolist() if vr == "US" else table.astype("<u2").tobytes())
    path = write_dicom(tmp_path / "lut.dcm", stored, bits_stored=12, VOILUTSequence=[item],
                       WindowCenter=100, WindowWidth=10)  # a LUT wins over a window
    decoded = read_image(path, SIDE)[0]
    assert np.array_equal(decoded, (stored // 16).astype(np.uint8))


@pytest.mark.parametrize("channels", [1, 3])
def test_8_bit_dicom_and_png_of_the_same_pixels_decode_identically(tmp_path, channels):
    picture = _picture((90, 70))
    Image.fromarray(picture).save(tmp_path / "same.png")
    write_dicom(tmp_path / "same.dcm", picture)
    from_png, from_dicom = (read_image(tmp_path / n, 32, channels) for n in ("same.png", "same.dcm"))
    assert from_dicom.shape == (channels, 32, 32) and from_dicom.dtype == np.uint8
    assert np.array_equal(from_dicom, from_png)


def test_jpeg_baseline_dicom_decodes_within_jpeg_error(tmp_path):
    picture = _picture((96, 128))
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "JPEG", quality=90)
    path = write_dicom(tmp_path / "jpeg.dcm", picture, syntax=JPEGBaseline8Bit,
                       pixel_data=encapsulate([buffer.getvalue()]))
    decoded = read_image(path, 64)[0].astype(float)
    source = np.asarray(Image.fromarray(picture).resize((64, 64), Image.Resampling.BILINEAR), dtype=float)
    assert source.std() > 20  # a real picture, so closeness means something
    assert np.abs(decoded - source).mean() < 3


def test_a_dicom_under_a_jpeg_name_is_found_by_its_magic(tmp_path):
    picture = _picture((SIDE, SIDE))
    path = write_dicom(tmp_path / "IM-0001-0001.jpeg", picture, photometric="MONOCHROME1")
    assert np.array_equal(read_image(path, SIDE)[0].astype(int), 255 - picture.astype(int))


def _refused(tmp_path: Path, kind: str) -> Path:
    picture = _picture((16, 16))
    path = tmp_path / f"{kind}.dcm"
    if kind == "multi-frame":
        return write_dicom(path, np.concatenate([picture, picture]), NumberOfFrames=2, Rows=16)
    if kind == "colour":
        rgb = np.repeat(picture[..., None], 3, axis=2)
        return write_dicom(path, rgb, photometric="RGB", SamplesPerPixel=3, PlanarConfiguration=0)
    if kind == "no-pixels":
        write_dicom(path, picture)
        from pydicom import dcmread
        ds = dcmread(path)
        del ds.PixelData
        ds.save_as(path, enforce_file_format=True)
        return path
    if kind == "32-bit":
        return write_dicom(path, picture.astype(np.uint32), bits_stored=24)
    if kind == "no-decoder":
        return write_dicom(path, picture, syntax=HTJ2KLossless, pixel_data=encapsulate([b"\xff\x4f" + bytes(64)]))
    if kind == "truncated":
        whole = write_dicom(path, picture).read_bytes()
        path.write_bytes(whole[: len(whole) - 100])
        return path
    path.write_bytes(Image.fromarray(picture).tobytes() * 4)  # "not-dicom": raw bytes named .dcm
    return path


@pytest.mark.parametrize("kind, reason", [
    ("multi-frame", "multi-frame DICOM \\(NumberOfFrames=2\\)"),
    ("colour", "colour DICOM \\(PhotometricInterpretation=RGB.*not a radiograph"),
    ("no-pixels", "without \\(7FE0,0010\\) Pixel Data"),
    ("32-bit", "BitsStored=24 is outside 1..16"),
    ("no-decoder", "High-Throughput JPEG 2000.*pip install pylibjpeg pylibjpeg-openjpeg"),
    ("truncated", "truncated or corrupt"),
    ("not-dicom", "not a DICOM file"),
])
def test_refused_dicoms_name_the_file_and_the_reason(tmp_path, kind, reason):
    if kind == "no-decoder" and get_decoder(HTJ2KLossless).is_available:
        pytest.skip("an HTJ2K decoder is installed here, so there is no missing decoder to report")
    path = _refused(tmp_path, kind)
    with pytest.raises(BadImageError, match=reason) as error:
        read_image(path, 32)
    assert error.value.path == str(path)


def test_an_invalid_window_is_ignored_with_a_warning(tmp_path):
    """Width 0 cannot be drawn (PS3.3 C.11.2.1.2.1: w >= 1): the window is skipped, as if there were none."""
    picture = _picture((SIDE, SIDE))
    path = write_dicom(tmp_path / "zero_width.dcm", picture, WindowCenter=128, WindowWidth=0)
    with pytest.warns(DicomWorkaroundWarning, match=f"{path}: .*window 1 \\(center 128, width 0\\).*ignored"):
        decoded = read_image(path, SIDE)[0]
    assert np.array_equal(decoded, picture)  # 8 bits stored, no window: the stored values as they are
    assert np.array_equal(read_image(path, SIDE, dicom_voi="none")[0], picture)


def test_kaggle_folder_mixing_dicoms_and_jpegs_goes_through_the_cache(tmp_path):
    root = tmp_path / "chest_xray"
    for label in ("NORMAL", "PNEUMONIA"):
        (root / "train" / label).mkdir(parents=True)
    picture = _picture((SIDE, SIDE))
    Image.fromarray(picture).save(root / "train" / "NORMAL" / "IM-0001-0001.jpeg", quality=95)
    write_dicom(root / "train" / "NORMAL" / "IM-0002-0001.dcm", picture)
    write_dicom(root / "train" / "PNEUMONIA" / "person1_virus_1.DCM", _ramp_12_bit(), bits_stored=12,
                WindowCenter=2048, WindowWidth=1024)
    write_dicom(root / "train" / "PNEUMONIA" / "person2_virus_2.jpeg", picture, photometric="MONOCHROME1")
    _refused(root / "train" / "PNEUMONIA", "multi-frame").rename(root / "train" / "PNEUMONIA" / "person3_virus_3.dcm")

    dm = ChestXrayDataModule(str(root), image_size=SIDE, num_workers=0, cache="memory")
    files = [path for path, _ in dm.scan("train").samples]
    assert len(files) == 5  # .dcm, .DCM and a DICOM named .jpeg are all listed
    by_voi = {voi: decode_all(files, SIDE, 1, cache_dir=tmp_path / "cache", workers=1, dicom_voi=voi)
              for voi in ("auto", "none")}
    row = {Path(f).name: i for i, f in enumerate(files)}
    for voi, decoded in by_voi.items():
        assert list(decoded.bad) == [row["person3_virus_3.dcm"]]
        assert "multi-frame" in decoded.bad[row["person3_virus_3.dcm"]]
        for name in ("IM-0002-0001.dcm", "person1_virus_1.DCM", "person2_virus_2.jpeg"):
            assert np.array_equal(decoded.pixels[row[name]], read_image(files[row[name]], SIDE, 1, voi))
    windowed = row["person1_virus_1.DCM"]
    assert not np.array_equal(by_voi["auto"].pixels[windowed], by_voi["none"].pixels[windowed])
    assert np.array_equal(by_voi["auto"].pixels[row["person2_virus_2.jpeg"]][0].astype(int), 255 - picture)
