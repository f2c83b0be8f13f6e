"""The Kaggle "Chest X-Ray Images (Pneumonia)" layout: ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pneumo.data.image_formats import IMAGE_SUFFIXES
from pneumo.data.labels import CLASS_NAMES, CLASS_TO_IDX
from pneumo.data.os_metadata import IGNORED, metadata_reason
from pneumo.data.sources.base import SPLITS, DataSource, Listing, plain
from pneumo.data.splits import patient_id

HOW_TO_GET_DATA = (
    "Download 'Chest X-Ray Images (Pneumonia)' (Kermany et al., Mendeley Data, CC BY 4.0; also on Kaggle) "
    "and unpack it so that ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg exist, then pass data.root=ROOT "
    "or set PNEUMO_DATA_ROOT; or run on the built-in demo set with data=synthetic.")
NOT_AN_IMAGE = f"not an image file {IGNORED}"
NOT_IN_A_CLASS = f"not inside a class folder {IGNORED}"


class KaggleFolder(DataSource):
    """ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/..., NORMAL=0 and PNEUMONIA=1; each split is its folder.

    Class folders match case-insensitively (`normal/` is NORMAL); images may sit in subfolders of a
    class folder. Files without an image suffix (notes.txt) and operating-system metadata (AppleDouble
    `._x.jpeg`, .DS_Store, Thumbs.db, `__MACOSX/`, hidden files) are left out and listed as "(ignored)".
    The patient of an image is parsed from its Kaggle file name (`person1946_bacteria_4874.jpeg`).

    Args:
        root: the folder holding train/, val/ and test/ (data.root).
        synthetic: the demo variant: parameters of `pneumo.demo.synthetic.ensure_synthetic_dataset`
            (data.synthetic), which writes the built-in synthetic set at `root` first; None for real data.
    """

    has_own_val = True
    advice = HOW_TO_GET_DATA

    def __init__(self, root: str | Path, synthetic: Mapping[str, Any] | None = None) -> None:
        if root is None or str(root) == "":
            raise ValueError(f"data.root is not set. {HOW_TO_GET_DATA}")
        self.root = Path(root).expanduser()
        self.name = self.root.name
        self.synthetic = plain(synthetic) if synthetic else None

    def prepare(self) -> None:
        if self.synthetic is not None:
            from pneumo.demo.synthetic import ensure_synthetic_dataset  # only the demo needs it

            ensure_synthetic_dataset(self.root, **self.synthetic)

    def listings(self, splits: frozenset[str]) -> list[Listing]:
        return [self.scan(split) for split in SPLITS if split in splits]

    def test_split(self) -> str:
        return "the test/ folder"

    def split_dir(self, split: str) -> Path:
        """ROOT/split, checked.

        Raises:
            FileNotFoundError: ROOT or ROOT/split is missing; says how to get the data.
        """
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {self.root} does not exist. {HOW_TO_GET_DATA}")
        path = self.root / split
        if not path.is_dir():
            raise FileNotFoundError(f"split folder {path} is missing. {HOW_TO_GET_DATA}")
        return path

    def scan(self, split: str) -> Listing:
        """The images of one split folder, class folder by class folder (as torchvision's ImageFolder
        orders them: class folders by name, then os.walk order, files by name).

        Raises:
            FileNotFoundError: the split folder is missing, or a class folder holds no image.
            ValueError: the class folders are not exactly NORMAL and PNEUMONIA (any case, once each).
        """
        directory = self.split_dir(split)
        skipped: list[dict[str, str]] = []
        folders = []
        for entry in sorted(os.scandir(directory), key=lambda entry: entry.name):
            reason = metadata_reason(entry.path, directory)
            if entry.is_dir() and reason is None:
                folders.append(entry.name)
            elif entry.is_dir():  # __MACOSX/, .hidden/: every file below is listed with its own reason
                skipped += [{"path": path, "reason": metadata_reason(path, directory) or reason}
                            for path in _files_under(Path(entry.path))]
            else:
                skipped.append({"path": entry.path, "reason": reason or NOT_IN_A_CLASS})
        files, labels = [], []
        empty = []
        for folder, label in sorted(_class_folders(directory, folders).items()):
            found = 0
            for path in _files_under(directory / folder):
                reason = metadata_reason(path, directory)
                if reason is None and not path.lower().endswith(IMAGE_SUFFIXES):
                    reason = NOT_AN_IMAGE
                if reason is not None:
                    skipped.append({"path": path, "reason": reason})
                    continue
                files.append(path)
                labels.append(label)
                found += 1
            if not found:
                empty.append(folder)
        if empty:
            raise FileNotFoundError(f"{directory}: found no image file in the class folder(s) {', '.join(empty)}. "
                                    f"Each of {'/'.join(CLASS_NAMES)} needs images. {HOW_TO_GET_DATA}")
        return Listing(group=split, where=str(directory), files=files, labels=np.array(labels, dtype=np.float32),
                       patients=[patient_id(file) for file in files], splits=[split] * len(files), skipped=skipped)


def _class_folders(directory: Path, folders: list[str]) -> dict[str, int]:
    """{folder name: class index}: exactly one NORMAL and one PNEUMONIA folder, in any case."""
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
    return {by_class[name][0]: CLASS_TO_IDX[name] for name in CLASS_NAMES}


def _files_under(folder: Path) -> list[str]:
    """Every file below `folder`, in ImageFolder's order: os.walk (following links) sorted, names sorted."""
    return [os.path.join(root, name) for root, _, names in sorted(os.walk(folder, followlinks=True))
            for name in sorted(names)]
