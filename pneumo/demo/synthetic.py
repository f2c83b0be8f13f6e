"""Built-in synthetic chest X-ray data set for tests and the offline demo.

The real Kaggle "Chest X-Ray Images (Pneumonia)" set cannot be downloaded
everywhere, so this module writes a stand-in with the *same* on-disk layout,
file naming and file format (real JPEG files, mostly 8-bit grayscale, a few
RGB, varying sizes)::

    ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg

That way the data pipeline under test is exactly the one used on real data.

The images are cartoon radiographs: body outline, two dark lung fields,
spine/mediastinum/heart, ribs and clavicles, plus nuisance variation
(exposure, gamma, pose, markers, tubes, electrodes, soft-tissue shadows).
PNEUMONIA images additionally carry patchy, textured opacities inside one or
both lungs, from faint to dense. The signal is local and textural on purpose:
a global statistic such as mean intensity hardly separates the classes, while
a small CNN can learn it.

Generation is deterministic (each image has its own numpy Generator seeded
from ``(seed, split, index)``), so the same parameters give byte-identical
files regardless of how many processes render them.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from typing import Any
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pneumo.demo.render import render_image
from pneumo.demo.written_once import WrittenOnce

__all__ = [
    "CLASSES",
    "FORMAT_VERSION",
    "MARKER_NAME",
    "NAME_PATTERNS",
    "SPLITS",
    "ensure_synthetic_dataset",
    "write_synthetic_dataset",
]

# Bump whenever the rendering or naming changes, so cached sets get rewritten.
FORMAT_VERSION = 2
MARKER_NAME = ".synthetic.json"
# Present while a set is being written; lets ensure_* recognise its own debris.
_INCOMPLETE_NAME = ".synthetic.incomplete"
_FOLDER = WrittenOnce(MARKER_NAME, _INCOMPLETE_NAME, "synthetic data set")

SPLITS = ("train", "val", "test")
CLASSES = ("NORMAL", "PNEUMONIA")

# Kaggle naming: NORMAL "IM-0115-0001.jpeg" / "NORMAL2-IM-1427-0001.jpeg",
# PNEUMONIA "person1_bacteria_1.jpeg" / "person1_virus_6.jpeg".
NAME_PATTERNS: dict[str, re.Pattern[str]] = {
    "NORMAL": re.compile(r"^(?P<prefix>NORMAL2-)?IM-(?P<patient>\d{4})-(?P<image>\d{4})\.jpeg$"),
    "PNEUMONIA": re.compile(r"^person(?P<patient>\d+)_(?P<kind>bacteria|virus)_(?P<image>\d+)\.jpeg$"),
}

# Images per patient: mostly 1-3, sometimes 4 (as in the real set).
_IMAGES_PER_PATIENT = (1, 2, 3, 4)
_IMAGES_PER_PATIENT_P = (0.45, 0.30, 0.17, 0.08)
_MAX_NORMAL_PATIENTS = 9999  # 4-digit patient numbers
_BACTERIA_P = 0.62
_NORMAL2_P = 0.3
_MAX_WORKERS = 2
_MIN_IMAGES_FOR_POOL = 48  # below this a pool costs more than it saves
# Seed-stream tags so plan and image generators never share a stream.
_PLAN_STREAM = 1
_IMAGE_STREAM = 2


@dataclass(frozen=True)
class _Params:
    """Validated generation parameters; also what the marker file records."""

    seed: int = 0
    n_train: int = 600
    n_val: int = 16
    n_test: int = 200
    normal_fraction: float = 0.26
    min_side: int = 512
    max_side: int = 1024
    rgb_fraction: float = 0.1
    quality: int = 90

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if min(self.n_train, self.n_val, self.n_test) < 0:
            raise ValueError("image counts must be >= 0")
        if not 0.0 <= self.normal_fraction <= 1.0:
            raise ValueError("normal_fraction must be in [0, 1]")
        if not 0.0 <= self.rgb_fraction <= 1.0:
            raise ValueError("rgb_fraction must be in [0, 1]")
        if not 16 <= self.min_side <= self.max_side:
            raise ValueError("need 16 <= min_side <= max_side")
        if not 1 <= self.quality <= 100:
            raise ValueError("quality must be in [1, 100]")

    @classmethod
    def make(cls, **kw: object) -> _Params:
        """Coerce types so that e.g. ``0`` and ``0.0`` give the same marker."""
        ints = ("seed", "n_train", "n_val", "n_test", "min_side", "max_side", "quality")
        return cls(**{k: (int(v) if k in ints else float(v)) for k, v in kw.items()})  # type: ignore[arg-type]

    def marker(self) -> dict[str, object]:
        return {"format_version": FORMAT_VERSION, "params": asdict(self)}


@dataclass(frozen=True)
class _Item:
    """One image to write: where, which class, how it is seeded."""

    split: str
    label: str
    name: str
    index: int  # position within the split; part of the image seed
    rgb: bool


# --------------------------------------------------------------------------
# Plan: counts, patients, file names
# --------------------------------------------------------------------------


def _split_counts(p: _Params) -> dict[str, tuple[int, int]]:
    """(normal, pneumonia) image counts per split.

    val is balanced like the real 16-image val split; train/test follow
    ``normal_fraction`` (about 1:3 in the real data).
    """
    counts = {}
    for split, n in (("train", p.n_train), ("val", p.n_val), ("test", p.n_test)):
        n_normal = n // 2 if split == "val" else int(round(n * p.normal_fraction))
        counts[split] = (n_normal, n - n_normal)
    return counts


def _patient_sizes(rng: np.random.Generator, n_images: int) -> list[int]:
    """Split ``n_images`` into per-patient image counts (last one truncated)."""
    sizes: list[int] = []
    left = n_images
    while left > 0:
        k = min(int(rng.choice(_IMAGES_PER_PATIENT, p=_IMAGES_PER_PATIENT_P)), left)
        sizes.append(k)
        left -= k
    return sizes


def _plan(p: _Params) -> list[_Item]:
    """Decide every file name, class and RGB flag up front (cheap, serial)."""
    rng = np.random.default_rng([p.seed, _PLAN_STREAM])
    counts = _split_counts(p)
    sizes = {
        (split, label): _patient_sizes(rng, counts[split][c])
        for split in SPLITS
        for c, label in enumerate(CLASSES)
    }

    # Patient numbers are drawn without replacement over the whole set, so no
    # patient can appear in two splits.
    n_norm_pat = sum(len(sizes[s, "NORMAL"]) for s in SPLITS)
    n_pneu_pat = sum(len(sizes[s, "PNEUMONIA"]) for s in SPLITS)
    if n_norm_pat > _MAX_NORMAL_PATIENTS:
        raise ValueError("too many NORMAL images for 4-digit patient numbers")
    norm_ids = iter(rng.choice(_MAX_NORMAL_PATIENTS, n_norm_pat, replace=False) + 1)
    pneu_ids = iter(rng.choice(max(2000, 3 * n_pneu_pat), n_pneu_pat, replace=False) + 1)
    running = {"bacteria": 0, "virus": 0}  # Kaggle's M is a running image number

    items: list[_Item] = []
    for split in SPLITS:
        names: list[tuple[str, str]] = []
        for k in sizes[split, "NORMAL"]:
            pid = int(next(norm_ids))
            prefix = "NORMAL2-" if rng.random() < _NORMAL2_P else ""
            names += [("NORMAL", f"{prefix}IM-{pid:04d}-{j + 1:04d}.jpeg") for j in range(k)]
        for k in sizes[split, "PNEUMONIA"]:
            pid = int(next(pneu_ids))
            kind = "bacteria" if rng.random() < _BACTERIA_P else "virus"
            for _ in range(k):
                running[kind] += int(rng.integers(1, 4))  # gaps, as in the real set
                names.append(("PNEUMONIA", f"person{pid}_{kind}_{running[kind]}.jpeg"))
        n_rgb = int(round(p.rgb_fraction * len(names)))
        rgb = set(rng.choice(len(names), n_rgb, replace=False).tolist()) if names else set()
        items += [_Item(split, label, name, i, i in rgb) for i, (label, name) in enumerate(names)]
    return items


def _image_seed(seed: int, split: str, index: int) -> list[int]:
    return [seed, _IMAGE_STREAM, SPLITS.index(split), index]


def _write_one(task: tuple[str, _Item, int, int, int, int]) -> None:
    """Render and save one image (top-level so a process pool can call it)."""
    path, item, seed, min_side, max_side, quality = task
    rng = np.random.default_rng(_image_seed(seed, item.split, item.index))
    img = render_image(rng, item.label == "PNEUMONIA", item.rgb, min_side, max_side)
    img.save(path, format="JPEG", quality=quality)


def _n_workers(n_tasks: int) -> int:
    """Processes to use: 2 where there are cores and enough work, else 1."""
    if n_tasks < _MIN_IMAGES_FOR_POOL or multiprocessing.current_process().daemon:
        return 1  # daemonic processes (e.g. DataLoader workers) cannot fork children
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1  # spawn would re-import the caller's __main__; not worth it
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(_MAX_WORKERS, cores))


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def write_synthetic_dataset(
    root: Path,
    *,
    seed: int = 0,
    n_train: int = 600,
    n_val: int = 16,
    n_test: int = 200,
    normal_fraction: float = 0.26,
    min_side: int = 512,
    max_side: int = 1024,
    rgb_fraction: float = 0.1,
    quality: int = 90,
) -> Path:
    """Write the synthetic set into ``root`` (which must be absent or empty).

    Writes in place and finishes with the ``.synthetic.json`` marker; use
    :func:`ensure_synthetic_dataset` for a cached, interruption-safe write.
    Refusing a non-empty ``root`` avoids mixing stale files into a new set.
    """
    p = _Params.make(seed=seed, n_train=n_train, n_val=n_val, n_test=n_test,
                     normal_fraction=normal_fraction, min_side=min_side, max_side=max_side,
                     rgb_fraction=rgb_fraction, quality=quality)
    root = Path(root)
    _FOLDER.begin(root)
    items = _plan(p)
    for split in SPLITS:
        for label in CLASSES:
            (root / split / label).mkdir(parents=True, exist_ok=True)

    tasks = [(str(root / it.split / it.label / it.name), it, p.seed, p.min_side, p.max_side, p.quality)
             for it in items]
    workers = _n_workers(len(tasks))
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_one, tasks, chunksize=8):
                pass
    else:
        for task in tasks:
            _write_one(task)

    counts = {f"{s}/{c}": sum(1 for it in items if it.split == s and it.label == c)
              for s in SPLITS for c in CLASSES}
    _FOLDER.finish(root, {**p.marker(), "counts": counts})
    return root


def ensure_synthetic_dataset(root: Path, **params: Any) -> Path:
    """Make sure ``root`` holds the synthetic set for these params (those of
    :func:`write_synthetic_dataset`, defaults alike); return it.

    Nothing is written when the marker already records the same params, so
    repeated calls (every test, every run) are free. Otherwise the set is
    written into a temporary sibling folder and renamed into place at the end:
    an interrupted write never leaves a half set that looks complete, and of
    two processes racing, the loser simply uses the winner's folder.
    """
    p = _Params.make(**params)  # a misspelled or unknown name is a TypeError here
    return _FOLDER.ensure(Path(root), p.marker(), lambda folder: write_synthetic_dataset(folder, **asdict(p)))
