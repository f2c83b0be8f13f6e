"""The chest X-ray DataModule: Kaggle folder layout, patient-grouped validation, class balance, cache."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder

from pneumo.cache import decode_all
from pneumo.images import DICOM_VOI_CHOICES, IMAGE_SUFFIXES, load_tensor
from pneumo.sampling import EpochBatches
from pneumo.splits import patient_id, patient_split, write_split

CLASS_TO_IDX = {"NORMAL": 0, "PNEUMONIA": 1}
CLASS_NAMES = ("NORMAL", "PNEUMONIA")
HOW_TO_GET_DATA = (
    "Download 'Chest X-Ray Images (Pneumonia)' (Kermany et al., Mendeley Data, CC BY 4.0; also on Kaggle) "
    "and unpack it so that ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg exist, then pass data.root=ROOT "
    "or set PNEUMO_DATA_ROOT; or run on the built-in demo set with data=synthetic.")


class CachedImages(Dataset):
    """Decoded uint8 images (N, C, H, W) with labels, seen through `rows` (the usable rows of the cache);
    indexed by a whole batch of indices at once.

    Batch indexing turns an epoch into a few array slices instead of thousands of per-item calls
    and collations, which matters on a 2-core laptop.
    """

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.pixels, self.labels = pixels, labels
        self.rows = np.arange(len(labels)) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if np.ndim(index):
            rows = self.rows[np.asarray(index)]
            order = np.argsort(rows)  # sorted reads are sequential on a memory map
            batch = np.empty((len(rows), *self.pixels.shape[1:]), dtype=self.pixels.dtype)
            batch[order] = self.pixels[rows[order]]
            return torch.from_numpy(batch), torch.from_numpy(self.labels[rows])
        row = self.rows[index]
        return torch.from_numpy(np.array(self.pixels[row])), torch.tensor(self.labels[row])


class ImageFiles(Dataset):
    """Image files decoded on every access, as in training: with their labels (a table with
    data.cache=none), or unlabelled (predict_dir) with label -1."""

    def __init__(self, files: list[str], image_size: int, channels: int, dicom_voi: str = "auto",
                 labels: np.ndarray | None = None) -> None:
        self.files, self.image_size, self.channels, self.dicom_voi = files, image_size, channels, dicom_voi
        self.labels = labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = -1.0 if self.labels is None else float(self.labels[index])
        return load_tensor(self.files[index], self.image_size, self.channels, self.dicom_voi), torch.tensor(label)


def list_images(folder: Path) -> list[str]:
    """Image files under a folder, recursively and sorted; an empty or missing folder is an error."""
    if not folder.is_dir():
        raise FileNotFoundError(f"predict_dir={folder} is not a folder: pass a folder of "
                                f"{'/'.join(IMAGE_SUFFIXES)} images")
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"predict_dir={folder} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    return files


class ChestXrayDataModule(L.LightningDataModule):
    """Kaggle layout ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg, NORMAL=0 and PNEUMONIA=1.

    Batches are uint8 (B, C, H, W) tensors plus float labels; scaling to [0, 1], augmentation and
    normalisation happen on the training device in the LightningModule.
    """

    def __init__(self, root: str, image_size: int = 128, channels: int = 1, batch_size: int = 32,
                 num_workers: int | str = "auto", val_strategy: str = "patient", val_fraction: float = 0.1,
                 balance: str = "none", cache: str = "disk", cache_dir: str | None = None, seed: int = 0,
                 pin_memory: bool | str = "auto", output_dir: str | None = None,
                 synthetic: dict[str, Any] | None = None, on_bad_file: str = "skip",
                 dicom: dict[str, Any] | None = None) -> None:
        super().__init__()
        if val_strategy not in ("patient", "folder"):
            raise ValueError(f"data.val_strategy={val_strategy!r}: choose 'patient' or 'folder'")
        if balance not in ("none", "pos_weight", "sampler"):
            raise ValueError(f"data.balance={balance!r}: choose 'none', 'pos_weight' or 'sampler'")
        if cache not in ("disk", "memory", "none"):
            raise ValueError(f"data.cache={cache!r}: choose 'disk', 'memory' or 'none'")
        if on_bad_file not in ("skip", "error"):
            raise ValueError(f"data.on_bad_file={on_bad_file!r}: choose 'skip' or 'error'")
        self.dicom_voi = str((dicom or {}).get("voi", "auto"))
        if self.dicom_voi not in DICOM_VOI_CHOICES:
            raise ValueError(f"data.dicom.voi={self.dicom_voi!r}: choose one of {', '.join(DICOM_VOI_CHOICES)}")
        if cache == "disk" and not cache_dir:
            raise ValueError("data.cache=disk needs data.cache_dir")
        self.root = Path(root).expanduser()
        self.image_size, self.channels, self.batch_size = image_size, channels, batch_size
        self.num_workers = num_workers
        resolve_num_workers(num_workers, cached=cache != "none")  # fail early on a bad value
        self.val_strategy, self.val_fraction, self.balance = val_strategy, val_fraction, balance
        self.cache, self.cache_dir, self.seed = cache, cache_dir, seed
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.output_dir = Path(output_dir) if output_dir else None
        self.synthetic = dict(synthetic) if synthetic else None
        self.files: dict[str, list[str]] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.datasets: dict[str, Dataset] = {}
        self.on_bad_file = on_bad_file
        self.skipped: list[dict[str, str]] = []
        self._reported: set[str] = set()

    # ---- discovery -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.synthetic is not None:
            from pneumo.synthetic import ensure_synthetic_dataset
            ensure_synthetic_dataset(self.root, **self.synthetic)

    def split_dir(self, split: str) -> Path:
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {self.root} does not exist. {HOW_TO_GET_DATA}")
        path = self.root / split
        if not path.is_dir():
            raise FileNotFoundError(f"split folder {path} is missing. {HOW_TO_GET_DATA}")
        return path

    def scan(self, split: str) -> ImageFolder:
        """ImageFolder over one split, with the class mapping checked, not assumed.

        Class folders match case-insensitively (`normal/` is NORMAL); files without an image
        extension (.DS_Store, Thumbs.db, notes) are left out and listed in the skipped files.
        """
        ignored: list[str] = []

        def is_image(path: str) -> bool:
            if path.lower().endswith(IMAGE_SUFFIXES):
                return True
            ignored.append(path)
            return False

        root = self.split_dir(split)
        try:
            folder = _CaseInsensitiveFolder(str(root), loader=partial(load_tensor, size=self.image_size,
                                                                      channels=self.channels,
                                                                      dicom_voi=self.dicom_voi),
                                            is_valid_file=is_image)
        except FileNotFoundError as error:  # a class folder without images
            raise FileNotFoundError(f"{root}: {error} Each of {'/'.join(CLASS_NAMES)} needs images. "
                                    f"{HOW_TO_GET_DATA}") from error
        self.skipped += [{"split": split, "path": path, "reason": "not an image file (ignored)"} for path in ignored]
        return folder

    # ---- setup -----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        wanted = ["test"] if stage in ("test", "predict") else ["train", "val"]
        if all(split in self.datasets for split in wanted):
            return  # Lightning calls setup again inside fit; the work is done once
        if stage in ("test", "predict"):
            source = self._decode("test", self.scan("test"))
            self._register("test", source, source.rows)
        else:
            self._setup_fit()
        self._report_bad_files()

    def _setup_fit(self) -> None:
        train = self._decode("train", self.scan("train"))
        if self.val_strategy == "patient":
            good = train.rows
            train_idx, val_idx = patient_split([train.files[r] for r in good], train.labels[good].tolist(),
                                               self.val_fraction, self.seed)
            self._register("train", train, good[train_idx])
            self._register("val", train, good[val_idx])
        else:
            val = self._decode("val", self.scan("val"))
            self._register("train", train, train.rows)
            self._register("val", val, val.rows)
        if self.output_dir is not None:
            write_split(self.output_dir / "split.json", self.root,
                        {"train": self.files["train"], "val": self.files["val"]})

    def _decode(self, split: str, folder: ImageFolder) -> "_Source":
        """Decode a whole split folder once (the cache does not depend on how it is split later)."""
        files = [path for path, _ in folder.samples]
        labels = np.array([label for _, label in folder.samples], dtype=np.float32)
        # With cache=none this pass only finds bad files; the pixels are dropped again.
        decoded = decode_all(files, self.image_size, self.channels,
                             cache_dir=self.cache_dir if self.cache == "disk" else None,
                             description=f"decoding {split}", dicom_voi=self.dicom_voi)
        self.skipped += [{"split": split, "path": files[row], "reason": reason}
                         for row, reason in sorted(decoded.bad.items())]
        rows = np.array(decoded.good_rows, dtype=np.int64)
        if len(rows) == 0:
            raise ValueError(f"no readable images for the {split} split under {folder.root}. {HOW_TO_GET_DATA}")
        return _Source(files, labels, folder if self.cache == "none" else decoded.pixels, rows)

    def _register(self, split: str, source: "_Source", rows: np.ndarray) -> None:
        self.files[split] = [source.files[r] for r in rows]
        self.labels[split] = source.labels[rows]
        if isinstance(source.pixels, Dataset):  # uncached: files decoded on every access
            self.datasets[split] = Subset(source.pixels, rows.tolist())
        else:
            self.datasets[split] = CachedImages(source.pixels, source.labels, rows)

    def _report_bad_files(self) -> None:
        """data.on_bad_file: `error` lists every unreadable file at once; `skip` warns once and goes on."""
        unreadable = [entry for entry in self.skipped if not entry["reason"].endswith("(ignored)")]
        new = [entry for entry in self.skipped if entry["path"] not in self._reported]
        self._reported.update(entry["path"] for entry in new)
        listing = "\n".join(f"  {entry['path']}: {entry['reason']}" for entry in new)
        if unreadable and self.on_bad_file == "error":
            raise ValueError(f"{len(unreadable)} file(s) cannot be read (data.on_bad_file=error):\n" + "\n".join(
                f"  {entry['path']}: {entry['reason']}" for entry in unreadable)
                + "\nRemove or replace them, or pass data.on_bad_file=skip to train without them.")
        if new:
            warnings.warn(f"skipped {len(new)} file(s) (data.on_bad_file={self.on_bad_file}):\n{listing}",
                          stacklevel=2)

    def skipped_files_text(self) -> str:
        """skipped_files.txt: one line per file left out, with the split and the reason."""
        return "".join(f"{entry['split']}\t{entry['path']}\t{entry['reason']}\n" for entry in self.skipped)

    # ---- facts the rest of the run needs ---------------------------------------------------------
    def patients(self, split: str) -> list[str]:
        """The patient of each image of a split (parsed from Kaggle file names)."""
        return [patient_id(file) for file in self.files[split]]

    def describe(self) -> dict[str, Any]:
        """What the data set is and what each split holds: for logs and reports."""
        return {"name": self.root.name, "source": str(self.root), "splits": self.summary()}

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
        batches = self._batches(split, shuffle)
        if isinstance(dataset, CachedImages):  # the dataset takes a whole batch of indices at once
            return DataLoader(dataset, sampler=batches, batch_size=None, **common)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=_collate_float_labels, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


@dataclass
class _Source:
    """One decoded split folder: all its files and labels, the pixels (or a Dataset of the files when
    uncached), and the rows that decoded."""

    files: list[str]
    labels: np.ndarray
    pixels: Any
    rows: np.ndarray


class _CaseInsensitiveFolder(ImageFolder):
    """ImageFolder whose class folders match NORMAL/PNEUMONIA in any case, and nothing else."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        folders = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
        by_class: dict[str, list[str]] = {}
        for name in folders:
            by_class.setdefault(name.upper(), []).append(name)
        unexpected = [name for name in folders if name.upper() not in CLASS_TO_IDX]
        doubled = [names for names in by_class.values() if len(names) > 1]
        missing = [name for name in CLASS_NAMES if name not in by_class]
        if unexpected or doubled or missing:
            raise ValueError(f"{directory} has class folders {folders}; expected exactly {list(CLASS_NAMES)} "
                             f"(NORMAL=0, PNEUMONIA=1, any case)"
                             + (f"; unexpected: {unexpected}" if unexpected else "")
                             + (f"; missing: {missing}" if missing else "")
                             + (f"; the same class twice: {doubled}" if doubled else ""))
        classes = [by_class[name][0] for name in CLASS_NAMES]
        return classes, {folder: CLASS_TO_IDX[folder.upper()] for folder in classes}


def _collate_float_labels(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*items)
    return torch.stack(images), torch.tensor(labels, dtype=torch.float32)


def resolve_num_workers(value: int | str, cached: bool) -> int:
    """'auto': no worker processes for a cache (a batch is one array slice; shipping it between processes
    costs more than making it, and the batch order then stays exactly resumable); for files decoded every
    epoch, half the CPU cores (at least 1, at most 8), the other half running the model."""
    if value == "auto":
        return 0 if cached else max(1, min(8, len(os.sched_getaffinity(0)) // 2))
    if int(value) < 0:
        raise ValueError(f"data.num_workers={value} must be >= 0 or 'auto'")
    return int(value)
