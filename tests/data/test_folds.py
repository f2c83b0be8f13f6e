"""Patient-grouped, stratified k folds: disjoint patients, full cover, class shares, seeds, refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pneumo.config_schema import value_problem
from pneumo.data.datamodule import ChestXrayDataModule
from pneumo.data.splits import fold_split, patient_folds


def _patients_and_labels(n_patients: int = 90, seed: int = 0) -> tuple[list[str], list[int]]:
    """1 to 4 images per patient; about a third of the patients positive."""
    rng = np.random.default_rng(seed)
    patients, labels = [], []
    for p in range(n_patients):
        for _ in range(int(rng.integers(1, 5))):
            patients.append(f"patient{p:03d}")
            labels.append(int(p % 3 == 0))
    return patients, labels


def test_folds_are_patient_disjoint_cover_every_image_once_and_are_stratified():
    patients, labels = _patients_and_labels()
    y = np.array(labels)
    folds = patient_folds(labels, patients, 5, seed=7)
    assert folds.shape == (len(labels),) and folds.dtype == np.int64
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]  # every image in exactly one of the 5 folds
    for patient in set(patients):
        assert len({folds[i] for i, p in enumerate(patients) if p == patient}) == 1
    overall = y.mean()
    for k in range(5):
        assert abs(y[folds == k].mean() - overall) < 0.1
        assert abs((folds == k).mean() - 0.2) < 0.06
    # fold_split: the fold is val, the rest train; the folds' val sides together are every image once
    vals = [fold_split(labels, patients, 5, k, seed=7)[1] for k in range(5)]
    assert sorted(i for val in vals for i in val) == list(range(len(labels)))
    train, val = fold_split(labels, patients, 5, 2, seed=7)
    assert not {patients[i] for i in train} & {patients[i] for i in val}
    assert sorted(train + val) == list(range(len(labels)))


def test_folds_are_deterministic_for_a_seed_differ_for_another_and_ignore_listing_order():
    patients, labels = _patients_and_labels()
    first = patient_folds(labels, patients, 4, seed=1)
    assert np.array_equal(first, patient_folds(labels, patients, 4, seed=1))
    assert not np.array_equal(first, patient_folds(labels, patients, 4, seed=2))
    reverse = patient_folds(labels[::-1], patients[::-1], 4, seed=1)[::-1]
    assert np.array_equal(first, reverse)


def test_refusals_name_the_keys():
    patients, labels = _patients_and_labels(30)
    with pytest.raises(ValueError, match="data.n_folds=1"):
        patient_folds(labels, patients, 1, seed=0)
    with pytest.raises(ValueError, match="data.fold=5"):
        fold_split(labels, patients, 5, 5, seed=0)
    with pytest.raises(ValueError, match="data.fold=-1"):
        fold_split(labels, patients, 5, -1, seed=0)
    # 2 positive patients cannot give each of 3 folds a positive image
    few = ["a", "b"] + [f"n{i}" for i in range(20)]
    with pytest.raises(ValueError, match=r"data.n_folds=3: fold \d's validation side holds no image of class"):
        patient_folds([1, 1] + [0] * 20, few, 3, seed=0)
    with pytest.raises(ValueError, match="data.n_folds=40 needs at least 40 patients"):
        patient_folds(labels, patients, 40, seed=0)
    with pytest.raises(ValueError, match="data.n_folds=3, data.fold=3"):
        ChestXrayDataModule("unused", n_folds=3, fold=3, cache="memory")
    with pytest.raises(ValueError, match="data.val_strategy=folder"):
        ChestXrayDataModule("unused", n_folds=3, val_strategy="folder", cache="memory")
    assert value_problem("data.n_folds", 1) is not None and value_problem("data.n_folds", None) is None
    assert value_problem("data.fold", -1) is not None and value_problem("data.fold", 4) is None


def test_the_data_module_serves_fold_k_as_validation_and_leaves_test_alone(tiny_root, tmp_path):
    modules = []
    for fold in range(3):
        dm = ChestXrayDataModule(str(tiny_root), image_size=32, num_workers=0, cache="memory", n_folds=3,
                                 fold=fold, seed=5, output_dir=str(tmp_path / f"fold{fold}"))
        dm.setup("fit")
        dm.setup("test")
        modules.append(dm)
    plain = ChestXrayDataModule(str(tiny_root), image_size=32, num_workers=0, cache="memory", seed=5)
    plain.setup("fit")
    plain.setup("test")
    every = sorted(plain.files["train"] + plain.files["val"])
    vals = [dm.files["val"] for dm in modules]
    assert sorted(f for val in vals for f in val) == every  # each non-test image validates exactly once
    for dm in modules:
        assert sorted(dm.files["train"] + dm.files["val"]) == every
        assert not set(dm.patients("train")) & set(dm.patients("val"))
        assert dm.files["test"] == plain.files["test"]
        assert min(dm.class_counts("val").values()) > 0
    split = json.loads((tmp_path / "fold1" / "split.json").read_text())
    assert split["n_folds"] == 3 and split["fold"] == 1 and len(split["val"]) == len(vals[1])
    assert json.loads((tmp_path / "fold1" / "split.json").read_text())["val"] != json.loads(
        (tmp_path / "fold2" / "split.json").read_text())["val"]
