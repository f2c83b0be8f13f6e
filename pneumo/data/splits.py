"""Patient-grouped, class-stratified validation split (or k folds) carved out of train.

The Kaggle set's own val/ holds 16 images, useless for model selection, and many patients have
several images: a random image-level split would put the same patient on both sides and inflate
validation metrics. Patients are parsed from the Kaggle file names.
"""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

# The three Kaggle naming patterns; the patient is everything before the per-image counter.
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+$", re.IGNORECASE),  # person1946_bacteria_4874
    re.compile(r"^(NORMAL2-IM-\d+)-\d+$", re.IGNORECASE),                 # NORMAL2-IM-1427-0001
    re.compile(r"^(IM-\d+)-\d+$", re.IGNORECASE),                         # IM-0115-0001
)


def patient_id(path: str | Path) -> str:
    """Patient id from a Kaggle file name; an unknown name is its own patient (the whole stem)."""
    stem = Path(path).stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def patient_split(paths: Sequence[str | Path], labels: Sequence[int], val_fraction: float,
                  seed: int, patients: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """Indices (train, val): about `val_fraction` of each class's images go to val, whole patients only.

    The patient of each image is `patients[i]` when given (a CSV's patient column), else parsed
    from the Kaggle file name.

    Deterministic for a given file list and seed. Each class needs at least two patients so that
    both sides keep that class; otherwise a ValueError says what to do.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"data.val_fraction={val_fraction} must be between 0 and 1")
    groups: dict[str, list[int]] = defaultdict(list)
    for index, path in enumerate(paths):
        groups[patients[index] if patients is not None else patient_id(path)].append(index)
    # A patient's class is its majority label (Kaggle patients never mix classes).
    by_class: dict[int, list[str]] = defaultdict(list)
    for patient in sorted(groups):
        votes = [labels[i] for i in groups[patient]]
        by_class[max(set(votes), key=votes.count)].append(patient)

    rng = np.random.default_rng(seed)
    val: list[int] = []
    for label in sorted(by_class):
        patients = by_class[label]
        if len(patients) < 2:
            raise ValueError(
                f"class {label} has {len(patients)} patient(s) in the training folder: a patient-grouped "
                f"validation split needs at least 2 per class. Add images or use data.val_strategy=folder.")
        order = [patients[i] for i in rng.permutation(len(patients))]
        target = val_fraction * sum(len(groups[p]) for p in patients)
        taken = 0
        for patient in order[:-1]:  # the last patient always stays in train
            if taken >= target and taken > 0:
                break
            val.extend(groups[patient])
            taken += len(groups[patient])
    val_set = set(val)
    train = [i for i in range(len(paths)) if i not in val_set]
    return train, sorted(val)


def patient_folds(labels: Sequence[int], patients: Sequence[str], n_folds: int, seed: int) -> np.ndarray:
    """The fold (0 .. n_folds-1) of each image: whole patients per fold, each fold about 1/n_folds of
    every class. int64 array of shape (N,), in the order of `labels` and `patients` (both length N).

    scikit-learn's StratifiedGroupKFold with shuffled patients: deterministic for a given list and
    seed, another seed gives other folds. Images are placed by patient in sorted order first, so the
    folds do not depend on the order the source lists its files in.

    Raises:
        ValueError: n_folds < 2, fewer patients than folds, or a fold (as validation or as training
            side) without one of the classes; the message names data.n_folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if n_folds < 2:
        raise ValueError(f"data.n_folds={n_folds} must be >= 2 (or null: one validation split of data.val_fraction)")
    y = np.asarray(labels, dtype=np.int64)
    order = sorted(range(len(y)), key=lambda i: (str(patients[i]), i))
    names = sorted({str(p) for p in patients})
    if len(names) < n_folds:
        raise ValueError(f"data.n_folds={n_folds} needs at least {n_folds} patients; there are {len(names)}")
    index = {name: number for number, name in enumerate(names)}
    group_ids = np.array([index[str(patients[i])] for i in order], dtype=np.int64)
    folds = np.empty(len(y), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(y)), y[order], group_ids)):
        folds[np.asarray(order)[held]] = k
    classes = set(y.tolist())
    for k in range(n_folds):
        for side, members in (("validation", folds == k), ("training", folds != k)):
            missing = classes - set(y[members].tolist())
            if missing or len(classes) < 2:
                raise ValueError(
                    f"data.n_folds={n_folds}: fold {k}'s {side} side holds no image of class(es) "
                    f"{sorted(missing) or 'other than ' + str(sorted(classes))} ({int((y == 0).sum())} NORMAL and "
                    f"{int((y == 1).sum())} PNEUMONIA images in {len(names)} patients); use fewer folds or more images")
    return folds


def fold_split(labels: Sequence[int], patients: Sequence[str], n_folds: int, fold: int,
               seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val) with fold `fold` of `patient_folds` as validation and the rest as train.

    Raises:
        ValueError: fold outside 0 .. n_folds-1 (naming data.fold), or what `patient_folds` refuses.
    """
    if n_folds >= 2 and not 0 <= fold < n_folds:
        raise ValueError(f"data.fold={fold} must be between 0 and data.n_folds-1={n_folds - 1}")
    folds = patient_folds(labels, patients, n_folds, seed)
    return np.flatnonzero(folds != fold).tolist(), np.flatnonzero(folds == fold).tolist()


def write_split(path: Path, root: Path, splits: Mapping[str, Sequence[str | Path]], **facts: Any) -> Path:
    """split.json: `facts` (e.g. the data set's name), then each split's files relative to the data
    root, so the split is portable."""
    payload = {**facts, **{name: [Path(os.path.relpath(file, root)).as_posix() for file in files]
                           for name, files in splits.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    return path
