"""The one DataModule: decode once, split by patient, balance the classes, serve batches, report bad files.

Where the images are and what they show is a data source's business (`pneumo.data.sources`: the Kaggle
folder, a label table, the demo sets, or any new `DataSource`); everything after that is done here, the
same way for every data set: the decode-once cache, the patient-grouped carve-outs (test when the source
has no test split of its own, then validation), class balance, loaders, bad-file reporting, split.json
and `describe()`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from pneumo.data.cache import decode_all
from pneumo.data.datasets import CachedImages, ImageFiles, collate_float_labels
from pneumo.data.image_formats import DICOM_VOI_CHOICES
from pneumo.data.labels import CLASS_NAMES
from pneumo.data.os_metadata import is_ignored
from pneumo.data.sampling import EpochBatches
from pneumo.data.sources import CARVE, SPLITS, DataSource, KaggleFolder, Listing, build_source
from pneumo.data.splits import fold_split, patient_split, write_split

# Ignored files (metadata, stray non-images) named in the warning before it only counts the rest; a Mac
# copy of the Kaggle set holds one AppleDouble file per image. skipped_files.txt lists every one.
WARN_IGNORED_AT_MOST = 20


@dataclass
class _Decoded:
    """One listing decoded: uint8 pixels (N, C, H, W) in listing order, or a Dataset of the files when
    data.cache=none; and the rows that decoded."""

    listing: Listing
    pixels: Any
    rows: np.ndarray


class ChestXrayDataModule(L.LightningDataModule):
    """Every data set's DataModule; `source` says which one (default: the Kaggle folder at `root`).

    Batches are uint8 (B, C, H, W) tensors plus float32 labels (NORMAL=0, PNEUMONIA=1); scaling to
    [0, 1], augmentation and normalisation happen on the training device in the LightningModule.

    Args:
        root: the Kaggle folder (data.root); like every keyword this module does not take itself, it is
            handed to the source. Positional for code written before sources existed.
        source: a `DataSource`, or a callable building one from the remaining keywords (a DataSource
            class; in YAML `source: {_target_: pneumo.data.sources.LabelTable, _partial_: true}`, its
            settings beside it as data.csv, data.label, ...). None: `KaggleFolder`.
        val_strategy: patient: carve val_fraction out of train, grouped by patient and stratified by
            class | folder: the source's own val split (Kaggle's val/ folder).
        n_folds, fold: k-fold cross-validation: with n_folds=K (>= 2) the non-test images are split into K
            patient-grouped, class-stratified folds (seeded by seed) and fold `fold` (0 .. K-1) is validation,
            in place of the val_fraction carve-out; null (the default): one val_fraction carve-out.
        test_fraction: the patient-grouped, stratified test share carved (seeded by seed + 1) out of the
            files a source leaves without a split (a table without official lists).
        balance: none | pos_weight (`pos_weight` for BCEWithLogitsLoss) | sampler (class-balanced draws).
        cache: disk (memory-mapped under cache_dir, reused across runs) | memory | none (decode every epoch).
        on_bad_file: skip: leave unreadable files out, warn once | error: stop, listing them all.
            Operating-system metadata and stray non-image files are "(ignored)" under both.
        dicom: {voi: auto | none}, for DICOM files.

    Raises:
        ValueError: a setting is out of its choices, a source setting is unknown or missing (named as
            data.KEY), val_strategy=folder for a source without a val split or with n_folds, n_folds < 2,
            fold outside 0 .. n_folds-1, or (at setup) a fold without one of the classes.
    """

    def __init__(self, root: str | None = None, *, source: DataSource | Callable[..., DataSource] | None = None,
                 image_size: int = 128, channels: int = 1, batch_size: int = 32, num_workers: int | str = "auto",
                 val_strategy: str = "patient", val_fraction: float = 0.1, test_fraction: float = 0.2,
                 balance: str = "none", cache: str = "disk", cache_dir: str | None = None, seed: int = 0,
                 pin_memory: bool | str = "auto", output_dir: str | None = None, on_bad_file: str = "skip",
                 dicom: dict[str, Any] | None = None, n_folds: int | None = None, fold: int = 0,
                 **source_options: Any) -> None:
        super().__init__()
        if val_strategy not in ("patient", "folder"):
            raise ValueError(f"data.val_strategy={val_strategy!r}: choose 'patient' or 'folder'")
        if not 0 < test_fraction < 1:
            raise ValueError(f"data.test_fraction={test_fraction} must be between 0 and 1")
        if balance not in ("none", "pos_weight", "sampler"):
            raise ValueError(f"data.balance={balance!r}: choose 'none', 'pos_weight' or 'sampler'")
        if cache not in ("disk", "memory", "none"):
            raise ValueError(f"data.cache={cache!r}: choose 'disk', 'memory' or 'none'")
        if on_bad_file not in ("skip", "error"):
            raise ValueError(f"data.on_bad_file={on_bad_file!r}: choose 'skip' or 'error'")
        if n_folds is not None and (n_folds < 2 or not 0 <= fold < n_folds):
            raise ValueError(f"data.n_folds={n_folds}, data.fold={fold}: n_folds must be >= 2 (or null) and fold "
                             f"between 0 and n_folds-1")
        if n_folds is not None and val_strategy == "folder":
            raise ValueError(f"data.n_folds={n_folds} carves validation folds out of train: it cannot be used with "
                             f"data.val_strategy=folder")
        self.n_folds, self.fold = n_folds, fold
        self.dicom_voi = str((dicom or {}).get("voi", "auto"))
        if self.dicom_voi not in DICOM_VOI_CHOICES:
            raise ValueError(f"data.dicom.voi={self.dicom_voi!r}: choose one of {', '.join(DICOM_VOI_CHOICES)}")
        if cache == "disk" and not cache_dir:
            raise ValueError("data.cache=disk needs data.cache_dir")
        resolve_num_workers(num_workers, cached=cache != "none")  # fail early on a bad value
        if root is not None:
            source_options = {"root": root, **source_options}
        self.source = build_source(KaggleFolder if source is None else source, source_options)
        if val_strategy == "folder" and not self.source.has_own_val:
            raise ValueError(f"data.val_strategy={val_strategy!r}: {self.source.name} ({type(self.source).__name__}, "
                             f"{self.source.location}) has no val split of its own, so validation is always "
                             f"carved out of train, patient-grouped; use data.val_strategy=patient (or leave it out)")
        self.image_size, self.channels, self.batch_size = image_size, channels, batch_size
        self.num_workers = num_workers
        self.val_strategy, self.val_fraction, self.test_fraction = val_strategy, val_fraction, test_fraction
        self.balance, self.cache, self.cache_dir, self.seed = balance, cache, cache_dir, seed
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.output_dir = Path(output_dir) if output_dir else None
        self.on_bad_file = on_bad_file
        self.files: dict[str, list[str]] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.datasets: dict[str, Dataset] = {}
        self.skipped: list[dict[str, str]] = []
        self._patients: dict[str, list[str]] = {}
        self._decoded: dict[str, _Decoded] = {}
        self._reported: set[str] = set()
        self._warned: set[str] = set()
        self._unreadable = 0

    @property
    def root(self) -> Path:
        """The data set's folder (a table's image folder); split.json lists files relative to it."""
        return self.source.root

    @property
    def evaluate_split(self) -> str:
        """What the test stage serves: "test", or "all" (every labelled image) for external validation."""
        return self.source.evaluate_split

    # ---- listing and decoding --------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.source.prepare()

    def scan(self, split: str) -> Listing:
        """What the source lists for `split` before anything is decoded (its files, labels, patients).

        Raises:
            ValueError: the source spreads that split over several groups.
        """
        listed = self.source.listings(frozenset({split}))
        if len(listed) != 1:
            raise ValueError(f"{self.source.name} lists the {split} split in {len(listed)} groups; scan() shows one")
        return listed[0]

    def setup(self, stage: str | None = None) -> None:
        """Decode what `stage` needs (fit: the train split, and val/ with val_strategy=folder; test and
        predict: the test split only), split it and build the datasets; then report skipped files."""
        wanted = ("test",) if stage in ("test", "predict") else ("train", "val")
        if all(split in self.datasets for split in wanted):
            return  # Lightning calls setup again inside fit; the work is done once
        asked = {"test"} if wanted == ("test",) else {"train", "val"} if self.val_strategy == "folder" else {"train"}
        listed = self.source.listings(frozenset(asked))
        for listing in listed:
            if listing.group not in self._decoded:
                self.skipped += [{"split": listing.group, **entry} for entry in listing.skipped]
        self._report_bad_files(decoded=False)  # with on_bad_file=error, stop before a long decode
        parts = [(group, self._split_group(group, wanted)) for group in map(self._decode, listed)]
        for split in wanted:
            self._register(split, *self._locate(split, parts))
        self._write_split()
        self._report_bad_files()

    def _decode(self, listing: Listing) -> _Decoded:
        """A listing decoded once per run (the cache key does not depend on how it is split later)."""
        known = self._decoded.get(listing.group)
        if known is not None and known.listing.files == listing.files:
            return _Decoded(listing, known.pixels, known.rows)  # the same files; this stage's splits
        # With cache=none this pass only finds bad files; the pixels are dropped again.
        decoded = decode_all(listing.files, self.image_size, self.channels,
                             cache_dir=self.cache_dir if self.cache == "disk" else None,
                             description=f"decoding {self.source.name} {listing.group}", dicom_voi=self.dicom_voi)
        self.skipped += [{"split": listing.group, "path": listing.files[row], "reason": reason}
                         for row, reason in sorted(decoded.bad.items())]
        self._unreadable += len(decoded.bad)
        rows = np.array(decoded.good_rows, dtype=np.int64)
        if len(rows) == 0:
            self._report_bad_files()
            raise ValueError(f"no readable images in {listing.where}: none of its {len(listing.files)} image "
                             f"file(s) could be read. {self.source.advice}")
        pixels = (ImageFiles(listing.files, self.image_size, self.channels, self.dicom_voi, listing.labels)
                  if self.cache == "none" else decoded.pixels)
        self._decoded[listing.group] = _Decoded(listing, pixels, rows)
        return self._decoded[listing.group]

    # ---- splitting -------------------------------------------------------------------------------
    def _locate(self, split: str, parts: list[tuple[_Decoded, dict[str, np.ndarray]]]) -> tuple[_Decoded, np.ndarray]:
        """The one group, and its rows, that make up `split`."""
        found = [(group, rows[split]) for group, rows in parts if len(rows[split])]
        if len(found) != 1:
            where = ", ".join(group.listing.where for group, _ in found) or "none of its listings"
            raise ValueError(f"the {split} split of {self.source.name} must come from one listing with readable "
                             f"images; it comes from {where}. {self.source.advice}")
        return found[0]

    def _split_group(self, group: _Decoded, wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Readable rows of one group per split: the source's own splits, then test carved out of the
        CARVE rows, then (val_strategy=patient, when val is wanted) val carved out of train."""
        listing, good = group.listing, group.rows
        marks = np.array(listing.splits, dtype=object)[good]
        rows = {split: good[marks == split] for split in (*SPLITS, CARVE)}
        if len(rows[CARVE]):
            keep, held = self._carve(listing, rows[CARVE], self.test_fraction, self.seed + 1,
                                     "test (data.test_fraction)")
            rows["test"] = np.sort(np.concatenate([rows["test"], held]))
            rows["train"] = np.sort(np.concatenate([rows["train"], keep]))
        elif "test" in listing.splits and any(split != "test" for split in listing.splits):
            self._check_own_split(listing, rows)
        if self.val_strategy == "patient" and "val" in wanted and len(rows["train"]) and self.n_folds:
            rows["train"], rows["val"] = self._fold(listing, rows["train"])
        elif self.val_strategy == "patient" and "val" in wanted and len(rows["train"]):
            rows["train"], rows["val"] = self._carve(listing, rows["train"], self.val_fraction, self.seed,
                                                     "validation (data.val_fraction)")
        return {split: rows[split] for split in SPLITS}

    def _check_own_split(self, listing: Listing, rows: dict[str, np.ndarray]) -> None:
        """A split the source made itself (official lists) must leave readable images on both sides;
        patients on both sides are warned about, not moved: the official split is the contract."""
        for side in ("test", "train"):
            if not len(rows[side]):
                raise ValueError(f"the {side} side of {self.source.name}'s own split ({self.source.test_split()}, "
                                 f"{listing.where}) holds no readable image. {self.source.advice}")
        shared = {listing.patients[r] for r in rows["test"]} & {listing.patients[r] for r in rows["train"]}
        if shared and listing.group not in self._warned:
            self._warned.add(listing.group)
            warnings.warn(f"{len(shared)} patient(s) are on both sides of {self.source.name}'s own split "
                          f"({self.source.test_split()}), e.g. {sorted(shared)[:5]}", stacklevel=3)

    def _carve(self, listing: Listing, rows: np.ndarray, fraction: float, seed: int,
               what: str) -> tuple[np.ndarray, np.ndarray]:
        """(kept, taken) subsets of `rows`: `fraction` of each class taken, whole patients only."""
        labels = listing.labels[rows]
        patients = [listing.patients[r] for r in rows]
        try:
            kept, taken = patient_split([listing.files[r] for r in rows], labels.tolist(), fraction, seed,
                                        patients=patients)
        except ValueError as error:
            if not 0 < fraction < 1:
                raise
            count = {name: len({p for p, y in zip(patients, labels) if y == index})
                     for index, name in enumerate(CLASS_NAMES)}
            folder = " or use data.val_strategy=folder" if "val" in what and self.source.has_own_val else ""
            raise ValueError(f"cannot carve a patient-grouped {what} split out of {len(rows)} images of "
                             f"{listing.where}: each class needs at least 2 patients, and there are "
                             f"{count['NORMAL']} NORMAL and {count['PNEUMONIA']} PNEUMONIA. Add images{folder}. "
                             f"{self.source.advice} ({error})") from error
        return rows[np.array(kept, dtype=np.int64)], rows[np.array(taken, dtype=np.int64)]

    def _fold(self, listing: Listing, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) subsets of `rows` for k-fold cross-validation: fold data.fold of data.n_folds."""
        try:
            train, val = fold_split(listing.labels[rows].tolist(), [listing.patients[r] for r in rows],
                                    self.n_folds, self.fold, self.seed)
        except ValueError as error:
            raise ValueError(f"cannot cut {len(rows)} images of {listing.where} into patient-grouped folds: "
                             f"{error}. {self.source.advice}") from error
        return rows[np.array(train, dtype=np.int64)], rows[np.array(val, dtype=np.int64)]

    def _register(self, split: str, group: _Decoded, rows: np.ndarray) -> None:
        listing = group.listing
        self.files[split] = [listing.files[r] for r in rows]
        self.labels[split] = listing.labels[rows]
        self._patients[split] = [listing.patients[r] for r in rows]
        if isinstance(group.pixels, Dataset):  # uncached: files decoded on every access
            self.datasets[split] = Subset(group.pixels, rows.tolist())
        else:
            self.datasets[split] = CachedImages(group.pixels, listing.labels, rows)

    def _write_split(self) -> None:
        """split.json: the files of each split so far, relative to `root` so the split is portable."""
        if self.output_dir is None:
            return
        how = ("all" if self.evaluate_split == "all"
               else self.source.test_split() or f"test_fraction={self.test_fraction}")
        write_split(self.output_dir / "split.json", self.root,
                    {split: self.files[split] for split in SPLITS if split in self.files},
                    name=self.source.name, test_split=how, n_folds=self.n_folds,
                    fold=self.fold if self.n_folds else None)

    # ---- bad files -------------------------------------------------------------------------------
    def _report_bad_files(self, decoded: bool = True) -> None:
        """data.on_bad_file: `error` lists every unreadable file at once; `skip` warns once and goes on.
        Ignored files (operating-system metadata, stray non-images) never stop a run."""
        unreadable = [entry for entry in self.skipped if not is_ignored(entry["reason"])]
        if unreadable and self.on_bad_file == "error":
            raise ValueError(f"{len(unreadable)} file(s) cannot be read (data.on_bad_file=error):\n" + "\n".join(
                f"  {entry['path']}: {entry['reason']}" for entry in unreadable)
                + "\nRemove or replace them, or pass data.on_bad_file=skip to train without them.")
        new = [entry for entry in self.skipped if entry["path"] not in self._reported]
        if not decoded or not new:
            return
        self._reported.update(entry["path"] for entry in new)
        ignored = [entry for entry in new if is_ignored(entry["reason"])]
        shown = [entry for entry in new if not is_ignored(entry["reason"])] + ignored[:WARN_IGNORED_AT_MOST]
        more = len(new) - len(shown)
        warnings.warn(f"skipped {len(new)} file(s) (data.on_bad_file={self.on_bad_file}):\n"
                      + "\n".join(f"  {entry['path']}: {entry['reason']}" for entry in shown)
                      + (f"\n  ... and {more} more ignored file(s), all listed in skipped_files.txt" if more else ""),
                      stacklevel=3)

    def skipped_files_text(self) -> str:
        """skipped_files.txt: one line per file left out, with the split and the reason."""
        return "".join(f"{entry['split']}\t{entry['path']}\t{entry['reason']}\n" for entry in self.skipped)

    # ---- facts the rest of the run needs ---------------------------------------------------------
    def patients(self, split: str) -> list[str]:
        """The patient of each image of a split (a table's patient column, or parsed from Kaggle names)."""
        return self._patients[split]

    def describe(self) -> dict[str, Any]:
        """What the data set is and what each split holds: for logs and reports."""
        return {"name": self.source.name, "source": self.source.location, **self.source.facts(),
                "unreadable_files": self._unreadable,
                "ignored_files": sum(1 for entry in self.skipped if is_ignored(entry["reason"])),
                "test_split": self.source.test_split() or f"patient-grouped test_fraction={self.test_fraction}",
                "evaluate_split": self.evaluate_split, "splits": self.summary()}

    def class_counts(self, split: str) -> dict[str, int]:
        labels = self.labels[split]
        return {name: int((labels == index).sum()) for index, name in enumerate(CLASS_NAMES)}

    def summary(self) -> dict[str, dict[str, int]]:
        return {split: self.class_counts(split) for split in self.labels}

    @property
    def pos_weight(self) -> float | None:
        """negatives / positives in train, for BCEWithLogitsLoss, when data.balance=pos_weight."""
        if self.balance != "pos_weight":
            return None
        counts = self.class_counts("train")
        return counts["NORMAL"] / max(counts["PNEUMONIA"], 1)

    # ---- loaders ---------------------------------------------------------------------------------
    def _batches(self, split: str, shuffle: bool) -> EpochBatches:
        labels = self.labels[split]
        weights = None
        if shuffle and self.balance == "sampler":
            class_weight = {label: 1.0 / max(int((labels == label).sum()), 1) for label in (0.0, 1.0)}
            weights = torch.tensor([class_weight[float(label)] for label in labels], dtype=torch.double)
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return EpochBatches(len(labels), self.batch_size, shuffle, self.seed, weights, rank, world)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup("test" if split == "test" else "fit")
        dataset = self.datasets[split]
        workers = resolve_num_workers(self.num_workers, cached=isinstance(dataset, CachedImages))
        common = dict(num_workers=workers, pin_memory=self.pin_memory, persistent_workers=workers > 0)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.overfit_batches > 0:
            # Lightning's overfit_batches swaps any sampler that is not a SequentialSampler for one, which
            # would feed single images to a batch-indexed loader: give it the plain, fixed order it wants.
            return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, collate_fn=collate_float_labels,
                              **common)
        batches = self._batches(split, shuffle)
        if isinstance(dataset, CachedImages):  # the dataset takes a whole batch of indices at once
            return DataLoader(dataset, sampler=batches, batch_size=None, **common)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_float_labels, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def resolve_num_workers(value: int | str, cached: bool) -> int:
    """'auto': no worker processes for a cache (a batch is one array slice; shipping it between processes
    costs more than making it, and the batch order then stays exactly resumable); for files decoded every
    epoch, half the CPU cores (at least 1, at most 8), the other half running the model."""
    if value == "auto":
        return 0 if cached else max(1, min(8, len(os.sched_getaffinity(0)) // 2))
    if int(value) < 0:
        raise ValueError(f"data.num_workers={value} must be >= 0 or 'auto'")
    return int(value)
