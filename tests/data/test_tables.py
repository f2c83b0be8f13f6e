"""Label tables (RSNA, NIH ChestX-ray14, any CSV) read into per-image records, and the DataModule over them."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumo.data.datamodule import ChestXrayDataModule
from pneumo.data.sources import LabelTable
from pneumo.data.table_datamodule import TableDataModule
from pneumo.data.tables import fill_template, read_table

RSNA_HEADER = ["patientId", "x", "y", "width", "height", "Target"]
NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position"]
NIH_LABEL = {"rule": "findings", "column": "Finding Labels", "separator": "|", "positive": "Pneumonia",
             "negative": ["No Finding"], "other": "exclude"}
NIH = dict(id_column="Image Index", file_template="{Image Index}", label=NIH_LABEL, patient_column="Patient ID")


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _touch(folder: Path, *names: str) -> None:
    """Files that only need to exist: read_table checks presence, decoding is the module's job."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def _nih_row(name: str, findings: str, patient: str) -> list[object]:
    return [name, findings, 0, patient, 50, "M", "PA"]


def _names(records) -> dict[str, float]:
    return {Path(file).name: float(label) for file, label in zip(records.files, records.labels)}


# ---- read_table -------------------------------------------------------------------------------------
def test_several_rows_per_image_give_one_label_positive_if_any_row_is(tmp_path):
    images = tmp_path / "stage_2_train_images"
    _touch(images, "a.dcm", "b.dcm", "c.dcm")
    table = _write_csv(tmp_path / "stage_2_train_labels.csv", RSNA_HEADER, [
        ["a", 10, 20, 30, 40, 1], ["a", 50, 60, 30, 40, 1],   # two boxes on one image
        ["b", "", "", "", "", 0],
        ["c", "", "", "", "", 0], ["c", 5, 5, 9, 9, 1]])        # rows disagree: any positive wins
    records = read_table(table, images, id_column="patientId", file_template="{patientId}.dcm",
                         label={"rule": "column", "column": "Target", "positive": [1]}, patient_column="patientId")
    assert _names(records) == {"a.dcm": 1.0, "b.dcm": 0.0, "c.dcm": 1.0}
    assert records.labels.dtype == np.float32 and records.patients == ["a", "b", "c"]
    assert records.official is None
    report = records.report
    assert (report["rows"], report["images"], report["positives"], report["negatives"]) == (5, 3, 2, 1)
    assert report["images_with_several_rows"] == 2 and report["conflicting"] == [] and report["excluded"] == {}


def test_nih_findings_rule_and_the_image_index_template(tmp_path):
    images = tmp_path / "images"
    rows = [_nih_row("p1.png", "Pneumonia", "1"), _nih_row("p2.png", "Effusion|Pneumonia", "2"),
            _nih_row("n1.png", "No Finding", "3"), _nih_row("e1.png", "Effusion", "4"),
            _nih_row("e2.png", "Infiltration|Effusion", "5")]
    _touch(images, *(row[0] for row in rows))
    table = _write_csv(tmp_path / "Data_Entry_2017.csv", NIH_HEADER, rows)

    records = read_table(table, images, **NIH)
    assert _names(records) == {"p1.png": 1.0, "p2.png": 1.0, "n1.png": 0.0}
    assert records.patients == ["1", "2", "3"]
    assert records.report["excluded"] == {"other findings only (data.label.other=exclude)": 2}
    assert records.report["excluded_findings"] == {"Effusion": 2, "Infiltration": 1}

    as_negative = read_table(table, images, **{**NIH, "label": {**NIH_LABEL, "other": "negative"}})
    assert _names(as_negative) == {"p1.png": 1.0, "p2.png": 1.0, "n1.png": 0.0, "e1.png": 0.0, "e2.png": 0.0}
    assert as_negative.report["excluded"] == {}


def test_templates_fill_column_names_with_spaces():
    row = {"Image Index": "00000001_000.png", "Patient ID": "1"}
    assert fill_template("{Image Index}", row) == "00000001_000.png"
    assert fill_template("p{Patient ID}/{Image Index}", row) == "p1/00000001_000.png"


def test_an_image_listed_twice_with_conflicting_findings_is_left_out_and_reported(tmp_path):
    images = tmp_path / "images"
    _touch(images, "a.png", "b.png", "c.png")
    table = _write_csv(tmp_path / "entries.csv", NIH_HEADER, [
        _nih_row("a.png", "Pneumonia", "1"), _nih_row("a.png", "No Finding", "1"),   # ambiguous
        _nih_row("b.png", "No Finding", "2"), _nih_row("b.png", "No Finding", "2"),  # a harmless repeat
        _nih_row("c.png", "Pneumonia", "3")])
    records = read_table(table, images, **NIH)
    assert _names(records) == {"b.png": 0.0, "c.png": 1.0}
    assert records.report["conflicting"] == [{"id": "a.png", "rows": 2, "labels": ["1.0", "0.0"]}]
    assert records.report["excluded"] == {"listed more than once with conflicting labels": 1}
    assert records.report["duplicate_rows"] == 1


def test_missing_files_are_reported_with_their_path_never_silently_dropped(tmp_path):
    images = tmp_path / "images"
    _touch(images, "here.png")
    table = _write_csv(tmp_path / "entries.csv", NIH_HEADER,
                       [_nih_row("here.png", "Pneumonia", "1"), _nih_row("gone.png", "No Finding", "2")])
    records = read_table(table, images, **NIH)
    assert _names(records) == {"here.png": 1.0}
    assert records.report["missing_files"] == [{"path": str(images / "gone.png"),
                                                "reason": f"listed in {table} but missing"}]


def test_configuration_errors_name_the_file_the_key_and_the_way_out(tmp_path):
    images = tmp_path / "images"
    _touch(images, "a.png")
    table = _write_csv(tmp_path / "entries.csv", NIH_HEADER, [_nih_row("a.png", "Pneumonia", "1")])
    with pytest.raises(ValueError) as error:
        read_table(table, images, **{**NIH, "id_column": "Image Idx"})
    message = str(error.value)
    assert str(table) in message and "'Image Idx'" in message and "data.id_column" in message
    assert "'Image Index'" in message and "'Finding Labels'" in message  # the columns that do exist
    with pytest.raises(ValueError, match="data.label.column"):
        read_table(table, images, **{**NIH, "label": {**NIH_LABEL, "column": "Findings"}})
    with pytest.raises(ValueError, match=r"data.file_template.*\{Image\}"):
        read_table(table, images, **{**NIH, "file_template": "{Image}.png"})
    with pytest.raises(FileNotFoundError) as missing_csv:
        read_table(tmp_path / "absent.csv", images, **NIH)
    assert str(tmp_path / "absent.csv") in str(missing_csv.value)
    assert "rsna-pneumonia-detection-challenge" in str(missing_csv.value)
    assert "nihcc.app.box.com" in str(missing_csv.value) and "data=synthetic_table" in str(missing_csv.value)
    with pytest.raises(FileNotFoundError, match=r"image folder .*absent_images.* data.image_dir"):
        read_table(table, tmp_path / "absent_images", **NIH)


def test_official_lists_assign_train_and_test_and_report_the_rest(tmp_path):
    images = tmp_path / "images"
    rows = [_nih_row(f"{i}.png", "Pneumonia" if i % 2 else "No Finding", str(i)) for i in range(5)]
    _touch(images, *(row[0] for row in rows))
    table = _write_csv(tmp_path / "Data_Entry_2017.csv", NIH_HEADER, rows)
    official = {"train": "train_val_list.txt", "test": "test_list.txt"}

    assert read_table(table, images, **NIH, official_split=official).official is None  # lists absent
    (tmp_path / "train_val_list.txt").write_text("0.png\n1.png\n\n2.png\n")
    with pytest.raises(FileNotFoundError, match="test_list.txt"):  # half an official split is a mistake
        read_table(table, images, **NIH, official_split=official)
    (tmp_path / "test_list.txt").write_text("3.png\n")
    records = read_table(table, images, **NIH, official_split=official)
    assert dict(zip((Path(f).name for f in records.files), records.official)) == {
        "0.png": "train", "1.png": "train", "2.png": "train", "3.png": "test"}
    assert records.report["official"]["in_neither"] == 1 and records.report["official"]["examples"] == ["4.png"]
    assert records.report["excluded"] == {"in neither official split list": 1}


def test_nih_images_in_subfolders_are_found_by_name(tmp_path):
    root = tmp_path / "nih"
    _touch(root / "images_001" / "images", "00000001_000.png")
    _touch(root / "images_002" / "images", "00000002_000.png")
    table = _write_csv(root / "Data_Entry_2017.csv", NIH_HEADER, [
        _nih_row("00000001_000.png", "Pneumonia", "1"), _nih_row("00000002_000.png", "No Finding", "2")])
    records = read_table(table, root, **NIH)
    assert records.files == [str(root / "images_001" / "images" / "00000001_000.png"),
                             str(root / "images_002" / "images" / "00000002_000.png")]
    assert records.report["found_in_subfolder"] == 2 and records.report["missing_files"] == []


# ---- TableDataModule --------------------------------------------------------------------------------
N_PATIENTS = 16  # 8 per class, 2-3 images each: enough for a patient-grouped test and val with both classes


@pytest.fixture(scope="module")
def table_set(tmp_path_factory) -> dict[str, Path]:
    """A small real table: PNG and JPEG files, several images per patient, one missing and one corrupt file."""
    root = tmp_path_factory.mktemp("table")
    images = root / "images"
    images.mkdir()
    rows, rng = [], np.random.default_rng(0)
    for patient in range(N_PATIENTS):
        label = patient % 2
        for k in range(2 + patient % 2):
            name = f"p{patient:02d}_{k}.{'png' if k % 2 else 'jpg'}"
            Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8), "L").save(images / name)
            rows.append([name, f"P{patient:02d}", label])
    rows.append(["gone.png", "P00", 0])
    (images / "broken.png").write_bytes(b"not a png at all")
    rows.append(["broken.png", "P01", 1])
    return {"csv": _write_csv(root / "labels.csv", ["file", "patient", "finding"], rows), "images": images}


def _module(table_set, tmp_path, **kwargs) -> TableDataModule:
    options = dict(csv=str(table_set["csv"]), image_dir=str(table_set["images"]), id_column="file",
                   label={"rule": "column", "column": "finding", "positive": [1]}, patient_column="patient",
                   test_fraction=0.25, val_fraction=0.25, image_size=32, batch_size=8, num_workers=0,
                   cache="memory", seed=0, output_dir=str(tmp_path / "out"), name="tiny_table")
    options.update(kwargs)
    return TableDataModule(**options)


def _patients(files: list[str]) -> set[str]:
    return {Path(f).name.split("_")[0] for f in files}


def test_splits_are_patient_grouped_stratified_and_cover_every_readable_image(table_set, tmp_path):
    dm = _module(table_set, tmp_path)
    with pytest.warns(UserWarning) as caught:
        dm.setup("fit")
    dm.setup("test")
    warned = " ".join(str(w.message) for w in caught)
    assert "gone.png" in warned and "broken.png" in warned
    sides = {split: dm.files[split] for split in ("train", "val", "test")}
    for split, files in sides.items():
        assert set(dm.labels[split].tolist()) == {0.0, 1.0}, split  # both classes on every side
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not _patients(sides[a]) & _patients(sides[b]), (a, b)
    readable = {Path(f).name for f in sum(sides.values(), [])}
    assert len(readable) == len(dm.table()) - 1 and "broken.png" not in readable and "gone.png" not in readable
    written = json.loads((tmp_path / "out" / "split.json").read_text())
    assert written["name"] == "tiny_table" and sorted(written["test"]) == sorted(Path(f).name for f in sides["test"])
    assert len(written["train"]) == len(sides["train"]) and not any(p.startswith("/") for p in written["val"])

    # The test split does not move when only val_fraction changes.
    other = _module(table_set, tmp_path / "other", val_fraction=0.4)
    with pytest.warns(UserWarning):
        other.setup("test")
    assert other.files["test"] == dm.files["test"]

    summary = dm.describe()
    assert summary["name"] == "tiny_table" and summary["images"] == len(dm.table()) == len(readable) + 1
    assert summary["missing_files"] == 1 and summary["unreadable_files"] == 1
    assert summary["splits"]["test"] == dm.class_counts("test")


def test_evaluate_split_all_serves_every_labelled_image(table_set, tmp_path):
    dm = _module(table_set, tmp_path, evaluate_split="all")
    with pytest.warns(UserWarning):
        dm.setup("test")
    assert "train" not in dm.files  # external validation needs no train/val split
    assert len(dm.files["test"]) == len(dm.table()) - 1  # all but the corrupt file
    images, labels = next(iter(dm.test_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 1, 32, 32) and labels.dtype == torch.float32


def test_official_lists_are_the_test_split_and_val_comes_from_their_train_list(table_set, tmp_path):
    folder = table_set["csv"].parent
    names = sorted(p.name for p in table_set["images"].iterdir() if p.name != "broken.png")
    held_out = [n for n in names if n.startswith(("p00_", "p01_", "p02_", "p03_"))]
    (folder / "official_train.txt").write_text("\n".join(n for n in names if n not in held_out) + "\n")
    (folder / "official_test.txt").write_text("\n".join(held_out) + "\n")
    dm = _module(table_set, tmp_path, official_split={"train": "official_train.txt", "test": "official_test.txt"})
    dm.setup("fit")  # no warning: gone.png and broken.png are on neither list, so they are not used
    dm.setup("test")
    assert dm.table().report["official"]["in_neither"] == 2
    assert sorted(Path(f).name for f in dm.files["test"]) == held_out
    assert not _patients(dm.files["train"] + dm.files["val"]) & _patients(held_out)
    assert not _patients(dm.files["train"]) & _patients(dm.files["val"])
    assert set(dm.labels["val"].tolist()) == {0.0, 1.0} and dm.describe()["test_split"] == "official lists"


def test_missing_and_corrupt_files_are_skipped_with_their_reason_or_stop_the_run(table_set, tmp_path):
    dm = _module(table_set, tmp_path)
    with pytest.warns(UserWarning):
        dm.setup("fit")
    text = dm.skipped_files_text()
    assert f"table\t{table_set['images'] / 'gone.png'}\tlisted in {table_set['csv']} but missing\n" in text
    assert f"table\t{table_set['images'] / 'broken.png'}\t" in text
    with pytest.raises(ValueError, match=r"data.on_bad_file=error[\s\S]*gone.png"):
        _module(table_set, tmp_path, on_bad_file="error").setup("fit")


def test_uncached_loading_gives_the_cached_tensors_and_pos_weight_counts_train(table_set, tmp_path):
    cached = _module(table_set, tmp_path, balance="pos_weight")
    uncached = _module(table_set, tmp_path, cache="none")
    for dm in (cached, uncached):
        with pytest.warns(UserWarning):
            dm.setup("fit")
    assert cached.files["val"] == uncached.files["val"]
    a, b = next(iter(cached.val_dataloader())), next(iter(uncached.val_dataloader()))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    counts = cached.class_counts("train")
    assert cached.pos_weight == pytest.approx(counts["NORMAL"] / counts["PNEUMONIA"])


def test_bad_settings_are_refused_with_the_key():
    common = dict(csv="x.csv", image_dir="x", id_column="id", label={"rule": "column", "column": "y"},
                  cache="memory")
    with pytest.raises(ValueError, match="data.evaluate_split='train'"):
        TableDataModule(**common, evaluate_split="train")
    with pytest.raises(ValueError, match="data.test_fraction=1.5"):
        TableDataModule(**common, test_fraction=1.5)
    with pytest.raises(ValueError, match="data.val_strategy='folder'"):
        TableDataModule(**common, val_strategy="folder")


# ---- configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, name, rule", [
    ("rsna_pneumonia", "rsna_pneumonia", "column"), ("nih_pneumonia", "nih_pneumonia", "findings"),
    ("synthetic_table", "synthetic_table", "column"), ("table", "table", "column")])
def test_table_configs_compose_and_instantiate(option, name, rule, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from pneumo.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"data={option}", f"output_dir={tmp_path}/out",
                                          f"cache_dir={tmp_path}/cache"])
    dm = instantiate(cfg.data)
    table = dm.source  # the table's settings live on its source; the module does the rest
    assert isinstance(dm, ChestXrayDataModule) and isinstance(table, LabelTable)
    assert table.name == name and table.label_rule["rule"] == rule
    assert dm.evaluate_split == "test" and dm.image_size == cfg.model.image_size
    if option == "nih_pneumonia":
        assert table.official_split == {"train": "train_val_list.txt", "test": "test_list.txt"}
        assert table.file_template == "{Image Index}" and table.patient_column == "Patient ID"
    if option == "synthetic_table":
        assert table.csv == tmp_path / "cache" / "synthetic_table" / "stage_2_train_labels.csv"
        assert table.synthetic_table == {"seed": 0, "n_images": 240}
    if option == "rsna_pneumonia":
        assert table.csv.name == "stage_2_train_labels.csv" and table.file_template == "{patientId}.dcm"


def test_a_row_naming_an_apple_double_file_is_ignored_and_listed_under_the_error_policy(table_set, tmp_path):
    """A table made on a Mac may list the `._x.jpg` beside x.jpg: not an image, not a reason to stop."""
    import shutil

    images = tmp_path / "images"
    shutil.copytree(table_set["images"], images, ignore=shutil.ignore_patterns("broken.png"))
    (images / "._p00_0.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ".ljust(4096, b"\x00"))
    with table_set["csv"].open() as handle:
        rows = [row for row in csv.reader(handle)][1:]
    rows = [row for row in rows if row[0] not in ("gone.png", "broken.png")] + [["._p00_0.jpg", "P00", 0]]
    table = _write_csv(tmp_path / "labels.csv", ["file", "patient", "finding"], rows)
    dm = _module({"csv": table, "images": images}, tmp_path, on_bad_file="error")
    with pytest.warns(UserWarning, match=r"skipped 1 file"):
        dm.setup("fit")
    dm.setup("test")
    assert dm.skipped_files_text() == (f"table\t{images / '._p00_0.jpg'}\tlisted in {table}, but macOS AppleDouble "
                                       f"metadata (the resource fork of the file beside it), not an image (ignored)\n")
    used = dm.files["train"] + dm.files["val"] + dm.files["test"]
    assert len(used) == len(rows) - 1 and not any(Path(f).name.startswith("._") for f in used)
    described = dm.describe()
    assert described["ignored_files"] == 1 and described["unreadable_files"] == 0 and described["missing_files"] == 0
