"""The Datasets the DataModule serves (decoded images from the cache, or image files decoded on every access),
and the image files of an unlabelled folder (evaluate.py's predict_dir)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pneumo.data.image_formats import IMAGE_SUFFIXES
from pneumo.data.os_metadata import IGNORED, metadata_reason
from pneumo.data.readers import load_tensor


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


def find_images(folder: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Image files under a folder, recursively and sorted; and the files left out, as {"path", "reason"}.

    Operating-system metadata (AppleDouble `._x.jpeg`, .DS_Store, Thumbs.db, `__MACOSX/`, hidden files)
    and files without an image suffix are left out with a reason ending in "(ignored)".

    Raises:
        FileNotFoundError: `folder` is not a folder, or holds no image; names it.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"predict_dir={folder} is not a folder: pass a folder of "
                                f"{'/'.join(IMAGE_SUFFIXES)} images")
    files, skipped = [], []
    for path in sorted(str(p) for p in folder.rglob("*") if p.is_file()):
        reason = metadata_reason(path, folder)
        if reason is None and not path.lower().endswith(IMAGE_SUFFIXES):
            reason = f"not an image file {IGNORED}"
        if reason is None:
            files.append(path)
        else:
            skipped.append({"path": path, "reason": reason})
    if not files:
        ignored = f" (only {len(skipped)} ignored file(s), e.g. {skipped[0]['path']})" if skipped else ""
        raise FileNotFoundError(f"predict_dir={folder} holds no {'/'.join(IMAGE_SUFFIXES)} images{ignored}")
    return files, skipped


def list_images(folder: Path) -> list[str]:
    """Image files under a folder, recursively and sorted (see `find_images`); the files left out are
    listed in one warning.

    Raises:
        FileNotFoundError: `folder` is not a folder, or holds no image.
    """
    files, skipped = find_images(folder)
    if skipped:
        shown = 20
        warnings.warn(f"{folder}: left out {len(skipped)} file(s):\n"
                      + "\n".join(f"  {entry['path']}: {entry['reason']}" for entry in skipped[:shown])
                      + (f"\n  ... and {len(skipped) - shown} more" if len(skipped) > shown else ""), stacklevel=2)
    return files


def collate_float_labels(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*items)
    return torch.stack(images), torch.tensor(labels, dtype=torch.float32)
