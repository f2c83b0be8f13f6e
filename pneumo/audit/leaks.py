"""Duplicates and leaks: image pairs that show the same picture (exact or near), and patients on several splits.

A leak is what inflates test or validation figures: the same picture, or the same patient, on two
splits. `cross_split_leaks` finds them on a set-up data module from its decoded cache (cheap), and
`warn_on_leaks` is what a training run calls to warn, naming the pairs. The audit (`run.py`) also lists
duplicates within a split and confirms exact pairs at full resolution (`confirm_exact`).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import numpy as np

from pneumo.audit.fingerprints import SPLIT_ORDER, ImageTable, audited_splits, fingerprint
from pneumo.audit.hashing import NEAR_MAX_DISTANCE, near_pairs
from pneumo.data.labels import CLASS_NAMES

FAIL_ON = ("none", "leak")  # audit.fail_on: leak exits 1 when an image or a patient crosses splits
MAX_PAIRS = 100_000  # pairs kept (closest first) when a loose threshold would list more
WARN_SHOWN = 5       # leaks named in the training warning; all are in the returned lines


class DataLeakWarning(UserWarning):
    """An image or a patient of the validation or test split is also on another split."""


@dataclass(frozen=True)
class Pair:
    """Two images that show the same picture.

    Attributes:
        kind: "exact" (identical decoded pixels) or "near" (perceptual hashes within the threshold).
        distance: Hamming distance of their perceptual hashes, in bits.
        splits, paths, labels (0/1), patients: of the two images; the first is on the earlier split
            (train, val, test), or first in the split's order.
        index: their rows in the ImageTable they were found in (for figures; not compared).
    """

    kind: str
    distance: int
    splits: tuple[str, str]
    paths: tuple[str, str]
    labels: tuple[int, int]
    patients: tuple[str, str]
    index: tuple[int, int] = field(default=(-1, -1), compare=False)

    @property
    def crosses(self) -> bool:
        """Whether the two images are on different splits (a leak)."""
        return self.splits[0] != self.splits[1]

    def line(self, root: str | Path | None = None) -> str:
        """One line naming both images, e.g. `exact duplicate: train .../a.jpeg == test .../b.jpeg`."""
        what = ("exact duplicate (identical decoded pixels)" if self.kind == "exact"
                else f"near duplicate (pHash distance {self.distance})")
        sign = "==" if self.kind == "exact" else "~"
        labels = "" if self.labels[0] == self.labels[1] else (
            f" [labels differ: {CLASS_NAMES[self.labels[0]]} vs {CLASS_NAMES[self.labels[1]]}]")
        return (f"{what}: {self.splits[0]} {relative(self.paths[0], root)} {sign} "
                f"{self.splits[1]} {relative(self.paths[1], root)}{labels}")


@dataclass(frozen=True)
class SharedPatient:
    """A patient with images on more than one split.

    Attributes:
        patient: the id the data source gives (a table's patient column, or parsed from Kaggle names).
        files: (split, files of the patient on that split) for each split, in train, val, test order.
    """

    patient: str
    files: tuple[tuple[str, tuple[str, ...]], ...]
    kind: str = "patient"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(split for split, _ in self.files)

    @property
    def crosses(self) -> bool:
        return True

    def line(self, root: str | Path | None = None) -> str:
        """One line: the patient, its image count per split and its first image on each split."""
        sides = ", ".join(f"{split} ({len(paths)}: {relative(paths[0], root)}{', ...' if len(paths) > 1 else ''})"
                          for split, paths in self.files)
        return f"patient {self.patient} on {len(self.files)} splits: {sides}"


Leak = Union[Pair, SharedPatient]


def relative(path: str | Path, root: str | Path | None) -> str:
    """`path` relative to `root` when it lies under it, else as given."""
    if root is None:
        return str(path)
    relation = os.path.relpath(path, root)
    return str(path) if relation.startswith("..") else relation


def find_pairs(table: ImageTable, max_distance: int = NEAR_MAX_DISTANCE,
               cross_only: bool = False) -> tuple[list[Pair], np.ndarray]:
    """Exact and near-duplicate pairs of a table, and each image's nearest perceptual-hash distance.

    Args:
        table: from `fingerprint`.
        max_distance: pHash Hamming distance up to which a pair is reported, in bits.
        cross_only: only pairs on different splits (the leak check: cheaper, no within-split search).

    Returns:
        (pairs, nearest): pairs sorted with cross-split ones first, then exact before near, then by
        distance; at most MAX_PAIRS of them (closest first, with a warning). nearest: uint16 (N,), each
        image's distance to its nearest other image (in another split when cross_only), 65535 if none.
    """
    nearest = np.full(len(table), np.iinfo(np.uint16).max, dtype=np.uint16)
    found: list[tuple[int, int, int]] = []
    if cross_only:
        present = [split for split in SPLIT_ORDER if split in set(table.splits)]
        for n, first in enumerate(present):
            for second in present[n + 1:]:
                a, b = table.where(first), table.where(second)
                matches = near_pairs(table.phash[a], table.phash[b], max_distance)
                nearest[a] = np.minimum(nearest[a], matches.nearest_a)
                nearest[b] = np.minimum(nearest[b], matches.nearest_b)
                found += zip(a[matches.i].tolist(), b[matches.j].tolist(), matches.distance.tolist())
    else:
        matches = near_pairs(table.phash, None, max_distance)
        nearest = matches.nearest_a
        found += zip(matches.i.tolist(), matches.j.tolist(), matches.distance.tolist())
    if len(found) > MAX_PAIRS:
        warnings.warn(f"{len(found)} image pairs within pHash distance {max_distance}: keeping the {MAX_PAIRS} "
                      f"closest; lower audit.near_max_distance", stacklevel=2)
        found = sorted(found, key=lambda item: item[2])[:MAX_PAIRS]
    pairs = [_pair(table, first, second, distance) for first, second, distance in found]
    pairs.sort(key=lambda p: (not p.crosses, p.kind != "exact", p.distance, p.index))
    return pairs, nearest


def _pair(table: ImageTable, i: int, j: int, distance: int) -> Pair:
    if (SPLIT_ORDER.index(table.splits[j]), j) < (SPLIT_ORDER.index(table.splits[i]), i):
        i, j = j, i
    return Pair(kind="exact" if table.exact[i] == table.exact[j] else "near", distance=int(distance),
                splits=(table.splits[i], table.splits[j]), paths=(table.paths[i], table.paths[j]),
                labels=(int(table.labels[i]), int(table.labels[j])),
                patients=(table.patients[i], table.patients[j]), index=(i, j))


def shared_patients(table: ImageTable) -> list[SharedPatient]:
    """Patients with images on more than one split, sorted by patient id."""
    by_patient: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for split, patient, path in zip(table.splits, table.patients, table.paths):
        by_patient[patient][split].append(path)
    return [SharedPatient(patient, tuple((split, tuple(sides[split])) for split in SPLIT_ORDER if split in sides))
            for patient, sides in sorted(by_patient.items()) if len(sides) > 1]


def cross_split_leaks(datamodule: Any, max_distance: int = NEAR_MAX_DISTANCE,
                      splits: list[str] | None = None) -> list[Leak]:
    """Exact and near-duplicate image pairs, and shared patients, across the splits of a data module.

    Reads the decoded images the module already holds (its cache: `datasets[split].pixels[rows]` at the
    training size), so it costs a pass over the cache and the pairwise hash comparison (about 20 ns per
    pair of images on one core: 0.3 s for 6,000 images, a minute for 100,000 x 30,000).

    Args:
        datamodule: set up for the splits to check.
        max_distance: pHash Hamming distance (bits of 256) up to which two images are copies.
        splits: which set-up splits (default: all it has).

    Returns:
        The crossing Pairs (cross-split ones only, exact first), then the SharedPatients.
    """
    table = fingerprint(datamodule, splits)
    pairs, _ = find_pairs(table, max_distance, cross_only=True)
    return [*pairs, *shared_patients(table)]


def setup_held_out(datamodule: Any) -> None:
    """Set the module up for the test stage too, when that stage serves a held-out split (not every image,
    as a table with data.evaluate_split=all does): the audit and the leak check look at every split.
    The DataModule's own guard makes a second call free."""
    if getattr(datamodule, "evaluate_split", "test") == "test":
        datamodule.setup("test")


def warn_on_leaks(datamodule: Any, max_distance: int = NEAR_MAX_DISTANCE) -> list[str]:
    """The training run's leak check: warn when the validation or test split shares images or patients.

    Sets the module up for the test stage first when it is not yet (and its test stage serves a held-out
    split, not every image): the test split is decoded once into the same cache evaluate.py reuses.

    Args:
        datamodule: a data module set up for fit (train and val).
        max_distance: as `cross_split_leaks`.

    Returns:
        One line per leak (`Pair.line`, `SharedPatient.line`; paths relative to the data root), empty
        when nothing crosses. When not empty, one DataLeakWarning names the first WARN_SHOWN of them.
    """
    setup_held_out(datamodule)
    root = getattr(datamodule, "root", None)
    leaks = cross_split_leaks(datamodule, max_distance)
    lines = [leak.line(root) for leak in leaks]
    if lines:
        n_pairs = sum(isinstance(leak, Pair) for leak in leaks)
        by_sides = defaultdict(int)
        for leak in leaks:
            by_sides["/".join(leak.splits)] += 1
        more = f"\n  ... and {len(lines) - WARN_SHOWN} more" if len(lines) > WARN_SHOWN else ""
        warnings.warn(f"data leak in {', '.join(audited_splits(datamodule))} of {root}: {n_pairs} image pair(s) "
                      f"and {len(leaks) - n_pairs} patient(s) cross splits "
                      f"({', '.join(f'{sides}: {n}' for sides, n in by_sides.items())}); validation and test "
                      f"figures may be optimistic:\n  " + "\n  ".join(lines[:WARN_SHOWN]) + more
                      + "\nRun `python -m pneumo.audit data=...` (same data settings) for the full list.",
                      DataLeakWarning, stacklevel=2)
    return lines


def confirm_exact(pairs: list[Pair], sizes: dict[str, tuple[int, int] | None], channels: int = 1,
                  dicom_voi: str = "auto") -> list[Pair]:
    """Exact pairs checked at full resolution; those whose full pictures differ become "near".

    Pixels identical at the cached size can hide a re-encoded or rescaled copy. A pair stays exact when
    the two files are byte-identical, or when they have the same native size and decode
    (`read_image` at that size) to the same pixels.

    Args:
        pairs: from `find_pairs`.
        sizes: native (width, height) per path (from facts), None when unknown.
        channels, dicom_voi: as the data module decodes.

    Returns:
        The pairs in the same order, exact ones confirmed or turned to "near".
    """
    from pneumo.data.readers import read_image

    checked = []
    for pair in pairs:
        if pair.kind == "exact" and _file_digest(pair.paths[0]) != _file_digest(pair.paths[1]):
            first, second = (sizes.get(path) for path in pair.paths)
            same = first is not None and first == second and np.array_equal(
                read_image(pair.paths[0], max(first), channels, dicom_voi),
                read_image(pair.paths[1], max(first), channels, dicom_voi))
            pair = pair if same else replace(pair, kind="near")
        checked.append(pair)
    return checked


def _file_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
