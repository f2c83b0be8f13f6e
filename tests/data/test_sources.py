"""Data sources composed into the one DataModule: the same splits as before the redesign, a new data set from
one source class and one config, stage-by-stage decoding, and the pre-source names old checkpoints store."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from pneumo.config import CONFIG_DIR
from pneumo.data.datamodule import ChestXrayDataModule
from pneumo.data.sources import CARVE, DataSource, KaggleFolder, LabelTable, Listing
from pneumo.models.checkpoints import upgrade_targets
from tests.conftest import TINY_SET

# Fingerprints of every split, computed with the code before the redesign (ChestXrayDataModule and
# TableDataModule of commit c9d28ad) on the same demo sets: (number of images, sha256 of the json list of
# [path relative to the data root, label, patient] in split order, first 16 hex digits).
BEFORE = {
    "folder_patient": {"train": (69, "7080a26693b1d507"), "val": (11, "cbd8af81fafb3149"),
                       "test": (40, "f35ed90b45f1dc32")},
    "folder_folder": {"train": (80, "053c65eaba5d8c99"), "val": (16, "54ca4a05c9e18d97"),
                      "test": (40, "f35ed90b45f1dc32")},
    "table_test": {"train": (42, "f327b4d28a7ec2b0"), "val": (6, "a90f6e5eff49829b"), "test": (12, "086a67194a99f3eb")},
    "table_all": {"test": (60, "ac166b42d9efa160")},
}


def _compose(*overrides: str, config_dir: Path | None = None):
    extra = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[*overrides, *extra])


def _fingerprint(dm: ChestXrayDataModule, split: str) -> tuple[int, str]:
    rows = [[Path(os.path.relpath(file, dm.root)).as_posix(), int(label), patient]
            for file, label, patient in zip(dm.files[split], dm.labels[split], dm.patients(split))]
    return len(rows), hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# ---- the demo sets: the same files, labels, patients and splits as before ------------------------------
@pytest.mark.parametrize("strategy", ["patient", "folder"])
def test_the_synthetic_folder_source_splits_as_before(tiny_root, tmp_path, strategy):
    synthetic = [f"data.synthetic.{key}={value}" for key, value in TINY_SET.items()]
    cfg = _compose("data=synthetic", f"data.root={tiny_root}", *synthetic, f"data.val_strategy={strategy}",
                   "data.cache=memory", "data.image_size=32", "data.num_workers=0", "seed=0",
                   f"output_dir={tmp_path}/out", f"cache_dir={tmp_path}/cache")
    dm = instantiate(cfg.data)
    assert isinstance(dm.source, KaggleFolder) and dm.source.synthetic == TINY_SET
    marker = (tiny_root / ".synthetic.json").stat().st_mtime_ns
    dm.prepare_data()  # the demo variant: the set is there with these parameters, so nothing is rewritten
    assert (tiny_root / ".synthetic.json").stat().st_mtime_ns == marker
    dm.setup("fit")
    dm.setup("test")
    assert {split: _fingerprint(dm, split) for split in ("train", "val", "test")} == BEFORE[f"folder_{strategy}"]
    assert dm.patients("train")[0] == re.match(r"(IM-\d+)", Path(dm.files["train"][0]).name).group(1)
    written = json.loads((tmp_path / "out" / "split.json").read_text())
    assert written["name"] == "chest_xray" and len(written["val"]) == BEFORE[f"folder_{strategy}"]["val"][0]


@pytest.mark.parametrize("evaluate", ["test", "all"])
def test_the_synthetic_table_source_splits_as_before(tmp_path, evaluate):
    cfg = _compose("data=synthetic_table", "data.synthetic_table.n_images=60", f"data.evaluate_split={evaluate}",
                   "data.cache=memory", "data.image_size=32", "data.num_workers=0", "seed=0",
                   f"output_dir={tmp_path}/out", f"cache_dir={tmp_path}/cache")
    dm = instantiate(cfg.data)
    assert isinstance(dm.source, LabelTable) and dm.evaluate_split == evaluate
    dm.prepare_data()  # the demo variant writes the DICOM table first
    assert (tmp_path / "cache" / "synthetic_table" / "stage_2_train_labels.csv").is_file()
    if evaluate == "test":
        dm.setup("fit")
    dm.setup("test")
    assert {split: _fingerprint(dm, split) for split in dm.files} == BEFORE[f"table_{evaluate}"]
    assert dm.describe()["test_split"] == "patient-grouped test_fraction=0.2"
    [listing] = dm.source.listings(frozenset({"train"}))
    assert listing.group == "table" and set(listing.splits) == {CARVE} and len(listing.files) == 60


def test_the_folder_test_stage_decodes_only_the_test_split(tiny_root, tmp_path):
    cache = tmp_path / "cache"
    dm = ChestXrayDataModule(str(tiny_root), image_size=32, num_workers=0, cache="disk", cache_dir=str(cache))
    dm.setup("test")
    assert set(dm.files) == set(dm.datasets) == {"test"}
    [decoded] = list(cache.glob("*.npy"))  # one cache array: the 40 test images, nothing of train or val
    assert np.load(decoded, mmap_mode="r").shape == (40, 1, 32, 32)
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape[1:] == (1, 32, 32) and labels.dtype == torch.float32
    dm.setup("fit")  # fit then decodes train (val is carved out of it): a second array
    assert len(list(cache.glob("*.npy"))) == 2 and set(dm.files) == {"train", "val", "test"}


# ---- a new data set: one source class and one config file ---------------------------------------------
class NamedPngs(DataSource):
    """A flat folder of PNGs named PATIENT_CLASS_K.png (class 'normal' or 'pneumonia'); no split of its own."""

    def __init__(self, folder: str) -> None:
        self.root = Path(folder)
        self.name = "named_pngs"

    def listings(self, splits: frozenset[str]) -> list[Listing]:
        files = sorted(str(path) for path in self.root.glob("*.png"))
        names = [Path(file).stem.split("_") for file in files]
        return [Listing(group="all", where=str(self.root), files=files,
                        labels=np.array([name[1] == "pneumonia" for name in names], dtype=np.float32),
                        patients=[name[0] for name in names], splits=[CARVE] * len(files))]


def test_a_new_data_set_is_one_source_class_and_one_config(tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for patient in range(12):
        for k in range(1 + patient % 3):
            kind = "pneumonia" if patient % 2 else "normal"
            pixels = rng.integers(0, 255, (40, 40), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"p{patient:02d}_{kind}_{k}.png")
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "named_pngs.yaml").write_text(
        "defaults:\n  - module/default@_here_\n  - _self_\n\n"
        f"source:\n  _target_: {__name__}.NamedPngs\n  _partial_: true\n"
        f"folder: {folder}\n")
    cfg = _compose("data=named_pngs", "data.cache=memory", "data.image_size=32", "data.batch_size=4",
                   "data.num_workers=0", "data.val_fraction=0.3", f"output_dir={tmp_path}/out",
                   f"cache_dir={tmp_path}/cache", config_dir=tmp_path / "conf")
    dm = instantiate(cfg.data)
    assert isinstance(dm, ChestXrayDataModule) and isinstance(dm.source, NamedPngs)
    dm.setup("fit")
    dm.setup("test")
    sides = {split: dm.patients(split) for split in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(sides[a]) & set(sides[b]), (a, b)  # carved by patient
    for split in sides:
        assert set(dm.labels[split].tolist()) == {0.0, 1.0}, split  # and stratified
        for file, label in zip(dm.files[split], dm.labels[split]):
            assert label == ("_pneumonia_" in file)
    assert sum(len(files) for files in dm.files.values()) == len(list(folder.glob("*.png")))
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 1, 32, 32) and labels.dtype == torch.float32
    described = dm.describe()
    assert described["name"] == "named_pngs" and described["test_split"] == "patient-grouped test_fraction=0.2"
    assert json.loads((tmp_path / "out" / "split.json").read_text())["test"]


def test_source_settings_are_checked_and_named_as_data_keys(tmp_path):
    with pytest.raises(ValueError, match=r"data\.folderr: not a setting .* NamedPngs takes folder"):
        ChestXrayDataModule(source=NamedPngs, folderr="x", cache="memory")
    with pytest.raises(ValueError, match=r"data\.folder not set"):
        ChestXrayDataModule(source=NamedPngs, cache="memory")
    with pytest.raises(ValueError, match=r"data\.csv not set"):
        ChestXrayDataModule(source=LabelTable, image_dir="x", id_column="id", label={}, cache="memory")
    with pytest.raises(ValueError, match=r"data\.synthetic: not a setting .* LabelTable takes csv"):
        ChestXrayDataModule(source=LabelTable, csv="x.csv", image_dir="x", id_column="id", label={}, synthetic={},
                            cache="memory")
    with pytest.raises(ValueError, match=r"data\.val_strategy='folder'.*no val split of its own"):
        ChestXrayDataModule(source=NamedPngs, folder="x", val_strategy="folder", cache="memory")
    class Rootless(NamedPngs):
        def __init__(self, folder: str) -> None:
            self.name = "rootless"

    with pytest.raises(TypeError, match="source Rootless does not set root"):
        ChestXrayDataModule(source=Rootless, folder="x", cache="memory")
    with pytest.raises(ValueError, match="labels must be 0 .NORMAL. or 1"):
        Listing(group="g", where="w", files=["a"], labels=np.array([2.0]), patients=["p"], splits=["train"])
    with pytest.raises(ValueError, match="unknown split"):
        Listing(group="g", where="w", files=["a"], labels=np.array([1.0]), patients=["p"], splits=["validation"])


# ---- checkpoints written before the move ------------------------------------------------------------
def test_the_flat_configs_old_checkpoints_store_still_build_a_working_module(tiny_root, tmp_path):
    """The data config as train.py stored it before sources: pre-move targets, flat keyword arguments."""
    common = {"image_size": 32, "channels": 1, "batch_size": 8, "num_workers": 0, "val_fraction": 0.1,
              "balance": "none", "cache": "memory", "cache_dir": str(tmp_path / "cache"), "seed": 0,
              "pin_memory": "auto", "output_dir": str(tmp_path / "out"), "on_bad_file": "skip",
              "dicom": {"voi": "auto"}}
    folder = {"_target_": "pneumo.data.ChestXrayDataModule", "root": str(tiny_root), "val_strategy": "patient",
              "synthetic": TINY_SET, **common}
    dm = instantiate(upgrade_targets({"data": folder})["data"])
    dm.prepare_data()
    dm.setup("fit")
    assert _fingerprint(dm, "train") == BEFORE["folder_patient"]["train"]  # seed 0, as BEFORE: the same split
    assert next(iter(dm.train_dataloader()))[0].shape == (8, 1, 32, 32)

    table_root = tmp_path / "synthetic_table"
    table = {"_target_": "pneumo.data_table.TableDataModule", "name": "synthetic_table",
             "csv": str(table_root / "stage_2_train_labels.csv"), "image_dir": str(table_root / "stage_2_train_images"),
             "id_column": "patientId", "file_template": "{patientId}.dcm",
             "label": {"rule": "column", "column": "Target", "positive": [1], "negative": None, "separator": "|",
                       "other": "exclude"},
             "patient_column": "patientId", "official_split": None, "test_fraction": 0.2, "evaluate_split": "test",
             "synthetic_table": {"seed": 0, "n_images": 60}, **common}
    dm = instantiate(upgrade_targets({"data": table})["data"])
    dm.prepare_data()
    dm.setup("test")
    assert _fingerprint(dm, "test") == BEFORE["table_test"]["test"]
    assert len(dm.table()) == 60  # the pre-source accessor the table bench reads
