import json

import pytest

from pneumo.data.splits import patient_id, patient_split, write_split


@pytest.mark.parametrize("name, patient", [
    ("person1946_bacteria_4874.jpeg", "person1946"),
    ("person77_virus_140.jpeg", "person77"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    ("scan_of_someone.jpeg", "scan_of_someone"),   # unknown names are their own patient
])
def test_patient_id_from_kaggle_names(name, patient):
    assert patient_id(f"/data/train/X/{name}") == patient


def _realistic_names(n_normal_patients=40, n_pneumonia_patients=110):
    names, labels = [], []
    for p in range(n_normal_patients):
        for k in range(1 + p % 3):
            prefix = "NORMAL2-IM" if p % 2 else "IM"
            names.append(f"train/NORMAL/{prefix}-{p:04d}-{k + 1:04d}.jpeg")
            labels.append(0)
    image = 0
    for p in range(n_pneumonia_patients):
        for k in range(1 + p % 4):
            kind = "virus" if p % 3 else "bacteria"
            names.append(f"train/PNEUMONIA/person{p}_{kind}_{image}.jpeg")
            labels.append(1)
            image += 1
    return names, labels


def test_patient_split_has_no_patient_on_both_sides_and_is_stratified():
    names, labels = _realistic_names()
    train, val = patient_split(names, labels, val_fraction=0.1, seed=0)
    assert sorted(train + val) == list(range(len(names)))
    train_patients = {patient_id(names[i]) for i in train}
    val_patients = {patient_id(names[i]) for i in val}
    assert not train_patients & val_patients
    for label in (0, 1):
        total = labels.count(label)
        in_val = sum(labels[i] == label for i in val)
        assert 0.05 * total <= in_val <= 0.2 * total, (label, in_val, total)


def test_patient_split_is_deterministic_by_seed():
    names, labels = _realistic_names()
    assert patient_split(names, labels, 0.1, seed=1) == patient_split(names, labels, 0.1, seed=1)
    assert patient_split(names, labels, 0.1, seed=1) != patient_split(names, labels, 0.1, seed=2)


def test_tiny_sets_split_or_fail_clearly():
    names = ["IM-0001-0001.jpeg", "IM-0002-0001.jpeg", "person1_virus_1.jpeg", "person2_virus_2.jpeg"]
    train, val = patient_split(names, [0, 0, 1, 1], 0.1, seed=0)
    assert {0, 1} == {[0, 0, 1, 1][i] for i in val} == {[0, 0, 1, 1][i] for i in train}
    with pytest.raises(ValueError, match="val_strategy=folder"):
        patient_split(names[:3], [0, 0, 1], 0.1, seed=0)


def test_write_split_uses_paths_relative_to_the_root(tmp_path):
    root = tmp_path / "data"
    write_split(tmp_path / "out" / "split.json", root,
                {"train": [root / "train/NORMAL/a.jpeg"], "val": [root / "train/PNEUMONIA/b.jpeg"]})
    assert json.loads((tmp_path / "out" / "split.json").read_text()) == {
        "train": ["train/NORMAL/a.jpeg"], "val": ["train/PNEUMONIA/b.jpeg"]}
