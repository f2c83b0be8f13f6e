"""The chest X-ray DataModule: Kaggle folder layout, patient-grouped validation, class balance, cache."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, \
    Subset, WeightedRandomSampler
from torchvision.datasets import ImageFolder

from pneumo.cache import decode_all
from pneumo.images import load_tensor
from pneumo.splits import patient_split, write_split

CLASS_TO_IDX = {"NORMAL": 0, "PNEUMONIA": 1}
CLASS_NAMES = ("NORMAL", "PNEUMONIA")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
HOW_TO_GET_DATA = (
    "Download 'Chest X-Ray Images (Pneumonia)' (Kermany et al., Mendeley Data, CC BY 4.0; also on Kaggle) "
    "and unpack it so that ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg exist, then pass data.root=ROOT "
    "or set PNEUMO_DATA_ROOT; or run on the built-in demo set with data=synthetic.")


class CachedImages(Dataset):
    """Decoded uint8 images (N, C, H, W) with labels; indexed by a whole batch of indices at once.

    Batch indexing turns an epoch into a few array slices instead of thousands of per-item calls
    and collations, which matters on a 2-core laptop.
    """

    def __init__(self, pixels: np.ndarray, labels: np.ndarray) -> None:
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if np.ndim(index):
            index = np.asarray(index)
            order = np.argsort(index)  # sorted reads are sequential on a memory map
            batch = np.empty((len(index), *self.pixels.shape[1:]), dtype=self.pixels.dtype)
            batch[order] = self.pixels[index[order]]
            return torch.from_numpy(batch), torch.from_numpy(self.labels[index])
        return torch.from_numpy(np.array(self.pixels[index])), torch.tensor(self.labels[index])


class ImageFiles(Dataset):
    """Unlabelled image files (predict_dir): the same decoding as training, label -1."""

    def __init__(self, files: list[str], image_size: int, channels: int) -> None:
        self.files, self.image_size, self.channels = files, image_size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return load_tensor(self.files[index], self.image_size, self.channels), torch.tensor(-1.0)


def list_images(folder: Path) -> list[str]:
    """Image files under a folder, recursively and sorted; an empty or missing folder is an error."""
    if not folder.is_dir():
        raise FileNotFoundError(f"predict_dir={folder} is not a folder: pass a folder of .jpeg/.jpg/.png images")
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
                 synthetic: dict[str, Any] | None = None) -> None:
        super().__init__()
        if val_strategy not in ("patient", "folder"):
            raise ValueError(f"data.val_strategy={val_strategy!r}: choose 'patient' or 'folder'")
        if balance not in ("none", "pos_weight", "sampler"):
            raise ValueError(f"data.balance={balance!r}: choose 'none', 'pos_weight' or 'sampler'")
        if cache not in ("disk", "memory", "none"):
            raise ValueError(f"data.cache={cache!r}: choose 'disk', 'memory' or 'none'")
        if cache == "disk" and not cache_dir:
            raise ValueError("data.cache=disk needs data.cache_dir")
        self.root = Path(root).expanduser()
        self.image_size, self.channels, self.batch_size = image_size, channels, batch_size
        self.num_workers = resolve_num_workers(num_workers)
        self.val_strategy, self.val_fraction, self.balance = val_strategy, val_fraction, balance
        self.cache, self.cache_dir, self.seed = cache, cache_dir, seed
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.output_dir = Path(output_dir) if output_dir else None
        self.synthetic = dict(synthetic) if synthetic else None
        self.files: dict[str, list[str]] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.datasets: dict[str, Dataset] = {}

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
        """ImageFolder over one split, with the class mapping checked, not assumed."""
        folder = ImageFolder(str(self.split_dir(split)),
                             loader=partial(load_tensor, size=self.image_size, channels=self.channels),
                             is_valid_file=lambda p: p.lower().endswith(IMAGE_SUFFIXES))
        if folder.class_to_idx != CLASS_TO_IDX:
            raise ValueError(f"{folder.root} has class folders {sorted(folder.class_to_idx)}; expected exactly "
                             f"{list(CLASS_TO_IDX)} (NORMAL=0, PNEUMONIA=1)")
        return folder

    # ---- setup -----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        wanted = ["test"] if stage in ("test", "predict") else ["train", "val"]
        if all(split in self.datasets for split in wanted):
            return  # Lightning calls setup again inside fit; the work is done once
        if stage not in ("test", "predict"):
            self._setup_fit()
        else:
            self._add_split("test", self.scan("test"), None)

    def _setup_fit(self) -> None:
        train_folder = self.scan("train")
        paths = [p for p, _ in train_folder.samples]
        labels = [y for _, y in train_folder.samples]
        if self.val_strategy == "patient":
            train_idx, val_idx = patient_split(paths, labels, self.val_fraction, self.seed)
            self._add_split("train", train_folder, train_idx)
            self._add_split("val", train_folder, val_idx)
        else:
            self._add_split("train", train_folder, None)
            self._add_split("val", self.scan("val"), None)
        if self.output_dir is not None:
            write_split(self.output_dir / "split.json", self.root, self.files["train"], self.files["val"])

    def _add_split(self, split: str, folder: ImageFolder, indices: list[int] | None) -> None:
        indices = list(range(len(folder.samples))) if indices is None else indices
        files = [folder.samples[i][0] for i in indices]
        labels = np.array([folder.samples[i][1] for i in indices], dtype=np.float32)
        if len(files) == 0:
            raise ValueError(f"no images for the {split} split under {folder.root}. {HOW_TO_GET_DATA}")
        self.files[split], self.labels[split] = files, labels
        if self.cache == "none":
            self.datasets[split] = Subset(folder, indices)
        else:
            pixels = decode_all(files, self.image_size, self.channels,
                                cache_dir=self.cache_dir if self.cache == "disk" else None,
                                description=f"decoding {split}")
            self.datasets[split] = CachedImages(pixels, labels)

    # ---- facts the rest of the run needs ---------------------------------------------------------
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
    def _sampler(self, split: str, shuffle: bool) -> torch.utils.data.Sampler:
        generator = torch.Generator().manual_seed(self.seed)
        dataset = self.datasets[split]
        if shuffle and self.balance == "sampler":
            labels = self.labels[split]
            class_weight = {label: 1.0 / max((labels == label).sum(), 1) for label in (0.0, 1.0)}
            weights = torch.tensor([class_weight[label] for label in labels], dtype=torch.double)
            return WeightedRandomSampler(weights, len(labels), replacement=True, generator=generator)
        return RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup("test" if split == "test" else "fit")
        dataset = self.datasets[split]
        common = dict(num_workers=self.num_workers, pin_memory=self.pin_memory,
                      persistent_workers=self.num_workers > 0)
        sampler = self._sampler(split, shuffle)
        if isinstance(dataset, CachedImages):
            batches = BatchSampler(sampler, self.batch_size, drop_last=False)
            return DataLoader(dataset, sampler=batches, batch_size=None, **common)
        return DataLoader(dataset, sampler=sampler, batch_size=self.batch_size,
                          collate_fn=_collate_float_labels, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _collate_float_labels(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*items)
    return torch.stack(images), torch.tensor(labels, dtype=torch.float32)


def resolve_num_workers(value: int | str) -> int:
    """'auto': half the CPU cores (at least 1, at most 8): the other half runs the model."""
    if value == "auto":
        return max(1, min(8, (os.cpu_count() or 2) // 2))
    if int(value) < 0:
        raise ValueError(f"data.num_workers={value} must be >= 0 or 'auto'")
    return int(value)
