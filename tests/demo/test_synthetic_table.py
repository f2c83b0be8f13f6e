"""The synthetic RSNA-style table: RSNA's CSV rules, every DICOM encoding, pictures that decode back."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEGBaseline8Bit

from pneumo.data.readers import read_image
from pneumo.demo.render import render_image
from pneumo.demo.synthetic_table import (ensure_synthetic_table, IMAGES_DIR, LABEL_COLUMNS, LABELS_CSV, MARKER_NAME, plan_table)

# Three rounds of the encodings, small pictures: written in well under a second.
TABLE = dict(seed=5, n_images=21, min_side=64, max_side=128)
SIZE = 48


@pytest.fixture(scope="module")
def table_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_table(tmp_path_factory.mktemp("table") / "synthetic_table", **TABLE)


def _rows(root: Path) -> tuple[list[str], dict[str, list[dict[str, str]]]]:
    with (root / LABELS_CSV).open(newline="") as handle:
        reader = csv.DictReader(handle)
        by_id: dict[str, list[dict[str, str]]] = defaultdict(list)
        for row in reader:
            by_id[row["patientId"]].append(row)
    return list(reader.fieldnames or []), dict(by_id)


def test_csv_follows_rsna_rules(table_root):
    columns, by_id = _rows(table_root)
    assert tuple(columns) == LABEL_COLUMNS
    assert len(by_id) == TABLE["n_images"]
    positives = 0
    for patient_id, rows in by_id.items():
        header = pydicom.dcmread(table_root / IMAGES_DIR / f"{patient_id}.dcm", stop_before_pixels=True)
        assert header.PatientID == patient_id
        if rows[0]["Target"] == "0":
            assert len(rows) == 1 and all(rows[0][k] == "" for k in ("x", "y", "width", "height"))
            continue
        positives += 1
        assert 1 <= len(rows) <= 2 and all(row["Target"] == "1" for row in rows)
        for row in rows:
            x, y, width, height = (float(row[k]) for k in ("x", "y", "width", "height"))
            assert width > 0 and height > 0
            assert x >= 0 and y >= 0 and x + width <= header.Columns and y + height <= header.Rows
    assert positives == round(TABLE["n_images"] / 3)
    assert sorted(p.name for p in (table_root / IMAGES_DIR).iterdir()) == sorted(f"{i}.dcm" for i in by_id)


def test_every_encoding_is_present(table_root):
    kinds = set()
    for path in (table_root / IMAGES_DIR).iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        kinds.add(ds.PhotometricInterpretation)
        kinds.add(f"{ds.BitsStored}-bit")
        if "RescaleSlope" in ds:
            kinds.add(f"slope {float(ds.RescaleSlope)} intercept {float(ds.RescaleIntercept)}")
        if "WindowCenter" in ds:
            kinds.add("window")
        if ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit:
            assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 8
            kinds.add("jpeg")
    assert {"MONOCHROME1", "MONOCHROME2", "8-bit", "12-bit", "window", "jpeg"} <= kinds
    assert len([k for k in kinds if k.startswith("slope")]) >= 2  # several slopes and intercepts


def test_every_file_decodes_to_the_picture_of_its_label(table_root):
    """Re-rendered from the same seed with the CSV's label: the files hold exactly those pictures."""
    _, by_id = _rows(table_root)
    compared = defaultdict(list)
    for image in plan_table(TABLE["seed"], TABLE["n_images"]):
        path = table_root / IMAGES_DIR / f"{image.patient_id}.dcm"
        pneumonia = by_id[image.patient_id][0]["Target"] == "1"
        picture = render_image(np.random.default_rng(list(image.image_seed)), pneumonia, False,
                                TABLE["min_side"], TABLE["max_side"])
        expected = np.asarray(picture.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=float)
        decoded = read_image(path, SIZE)[0].astype(float)
        assert expected.std() > 10  # a real picture, so closeness means something
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        kind = "jpeg" if ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit else "uncompressed"
        compared[kind].append(np.abs(decoded - expected).mean())
        if ds.PhotometricInterpretation == "MONOCHROME1" or ds.BitsStored == 12:
            assert np.abs(decoded - expected).mean() < 3, image.encoding.name
    assert max(compared["uncompressed"]) == 0  # exact: stored values are chosen to decode back
    assert 0 < max(compared["jpeg"]) < 3  # lossy, within JPEG error
    assert len(compared["uncompressed"]) + len(compared["jpeg"]) == TABLE["n_images"]


def test_a_second_call_writes_nothing(table_root):
    files = [table_root / LABELS_CSV, table_root / MARKER_NAME, *sorted((table_root / IMAGES_DIR).iterdir())[:3]]
    before = [f.stat().st_mtime_ns for f in files]
    assert ensure_synthetic_table(table_root, **TABLE) == table_root
    assert [f.stat().st_mtime_ns for f in files] == before


def test_same_seed_same_bytes_other_seed_other_patients(table_root, tmp_path):
    twin = ensure_synthetic_table(tmp_path / "twin", **TABLE)
    assert (twin / LABELS_CSV).read_bytes() == (table_root / LABELS_CSV).read_bytes()
    name = sorted(p.name for p in (twin / IMAGES_DIR).iterdir())[0]
    assert (twin / IMAGES_DIR / name).read_bytes() == (table_root / IMAGES_DIR / name).read_bytes()
    other = ensure_synthetic_table(tmp_path / "other", **{**TABLE, "seed": 6})
    assert not set(_rows(other)[1]) & set(_rows(table_root)[1])


def test_changed_parameters_rewrite_and_a_foreign_folder_is_kept(tmp_path):
    root = ensure_synthetic_table(tmp_path / "t", **{**TABLE, "n_images": 7})
    assert len(_rows(root)[1]) == 7
    ensure_synthetic_table(root, **{**TABLE, "n_images": 8})
    assert len(_rows(root)[1]) == 8 and len(list((root / IMAGES_DIR).iterdir())) == 8
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / LABELS_CSV).write_text("patientId,x,y,width,height,Target\n")
    with pytest.raises(FileExistsError, match="not a synthetic table"):
        ensure_synthetic_table(foreign, **TABLE)
    assert (foreign / LABELS_CSV).read_text() == "patientId,x,y,width,height,Target\n"
