"""One pass over a set-up data module's decoded images: per image its exact hash, perceptual hash and
grey-level statistics, in one table across the splits.

The pixels are the data module's own: the decode-once cache (`datasets[split].pixels[rows]`, read in
chunks, memory-mapped: cheap) or, with data.cache=none, the files decoded once more through the dataset.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumo.audit.hashing import HASH_SIZE, exact_hash, pack_bits, perceptual_hash

SPLIT_ORDER = ("train", "val", "test")
_CHUNK = 512  # images read from the cache at a time


@dataclass
class ImageTable:
    """Every audited image, split after split (train, val, test), one entry per image in each field.

    Attributes:
        splits: the split of each image.
        rows: the image's position within its split (index into datasets[split], files[split]).
        paths: its file.
        labels: int64 (N,), 0 NORMAL, 1 PNEUMONIA.
        patients: the patient id the data source gives.
        exact: hex digest of the decoded pixels (`hashing.exact_hash`).
        phash: uint64 (N, W) packed perceptual hashes (`hashing.perceptual_hash`, `pack_bits`).
        mean, std: float32 (N,) grey level mean and standard deviation of the decoded image (0-255).
        image_size: side of the decoded images, in pixels.
        hash_bits: bits in a perceptual hash.
    """

    splits: list[str]
    rows: np.ndarray
    paths: list[str]
    labels: np.ndarray
    patients: list[str]
    exact: list[str]
    phash: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    image_size: int
    hash_bits: int

    def __len__(self) -> int:
        return len(self.paths)

    def where(self, split: str) -> np.ndarray:
        """Indices (into this table) of the images of one split."""
        return np.flatnonzero(np.asarray(self.splits, dtype=object) == split)


def audited_splits(datamodule: Any) -> list[str]:
    """The splits the data module has set up, in train, val, test order."""
    return [split for split in SPLIT_ORDER if split in datamodule.datasets]


def split_pixels(dataset: Any, positions: Sequence[int]) -> np.ndarray:
    """Decoded uint8 images (n, C, H, W) of a split's dataset at `positions`.

    Reads the cache directly when the dataset has one (`.pixels` and `.rows`, CachedImages); otherwise
    decodes the files through the dataset (data.cache=none), one item at a time.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if hasattr(dataset, "pixels") and hasattr(dataset, "rows"):
        return np.asarray(dataset.pixels[dataset.rows[positions]])
    if not len(positions):
        return np.zeros((0, 1, 1, 1), dtype=np.uint8)
    return np.stack([np.asarray(dataset[int(p)][0]) for p in positions]).astype(np.uint8)


def fingerprint(datamodule: Any, splits: Sequence[str] | None = None, hash_size: int = HASH_SIZE) -> ImageTable:
    """Hash and measure every image of the set-up splits of a data module.

    Args:
        datamodule: set up for the splits wanted (`files`, `labels`, `patients(split)`, `datasets`).
        splits: which of them (default: all set up, in train, val, test order).
        hash_size: pHash side (hash_size**2 bits).

    Returns:
        The ImageTable, images in split order, then in each split's order.

    Raises:
        KeyError: a split that is not set up.
    """
    splits = list(splits) if splits is not None else audited_splits(datamodule)
    names, rows, paths, labels, patients, exact, bits, means, stds = [], [], [], [], [], [], [], [], []
    size = 0
    for split in splits:
        dataset, count = datamodule.datasets[split], len(datamodule.files[split])
        names += [split] * count
        rows.append(np.arange(count))
        paths += datamodule.files[split]
        labels.append(np.asarray(datamodule.labels[split]).astype(np.int64))
        patients += list(datamodule.patients(split))
        for start in range(0, count, _CHUNK):
            block = split_pixels(dataset, range(start, min(count, start + _CHUNK)))
            size = block.shape[-1]
            exact += [exact_hash(image) for image in block]
            bits += [perceptual_hash(image, hash_size) for image in block]
            values = block.reshape(len(block), -1).astype(np.float32)
            means.append(values.mean(axis=1))
            stds.append(values.std(axis=1))
    words = -(-hash_size * hash_size // 64)
    return ImageTable(splits=names, rows=_cat(rows, np.int64), paths=paths, labels=_cat(labels, np.int64),
                      patients=patients, exact=exact,
                      phash=pack_bits(np.array(bits)) if bits else np.zeros((0, words), dtype=np.uint64),
                      mean=_cat(means, np.float32), std=_cat(stds, np.float32), image_size=int(size),
                      hash_bits=hash_size * hash_size)


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
