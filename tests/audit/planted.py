"""A Kaggle-layout demo set with planted duplicates, a planted patient leak and planted outliers.

Every copy gets a new patient's name, so the only patient on two splits is the planted one; the copies
cross splits the way leaks do in practice (a train image found again in val or test).
"""
from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pneumo.data.splits import patient_id
from pneumo.demo.render import render_image


@dataclass
class Planted:
    """What was planted, as paths relative to the set's root.

    pairs: (original, copy) -> expected kind ("exact" or "near"); patient: the leaking patient id and
    its planted file; outliers: files that must be flagged, with a word their reason must contain.
    """

    root: Path
    pairs: dict[tuple[str, str], str] = field(default_factory=dict)
    patient: tuple[str, str] = ("", "")
    outliers: dict[str, str] = field(default_factory=dict)


def _files(root: Path, split: str, label: str) -> list[Path]:
    return sorted((root / split / label).glob("*.jpeg"))


def _save_jpeg(image: Image.Image, path: Path, quality: int) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    path.write_bytes(buffer.getvalue())


def plant(source: Path, root: Path) -> Planted:
    """Copy the demo set at `source` to `root` and plant into it:

    - an exact copy (the same bytes) of a train image into test,
    - a 0.7x resized copy of a train image into val,
    - a JPEG re-encoded copy (quality 60) of a train image into test,
    - a copy brightened by +10 grey levels of a train image into test,
    - a new picture in test named after a train PNEUMONIA patient (a patient leak),
    - a uniform grey image and a 3:1 wide image in train (outliers).
    """
    shutil.copytree(source, root)
    (root / ".synthetic.json").unlink(missing_ok=True)  # no longer the pristine demo set
    planted = Planted(root)
    normal, pneumonia = _files(root, "train", "NORMAL"), _files(root, "train", "PNEUMONIA")

    def add(original: Path, copy: Path, kind: str) -> None:
        planted.pairs[(str(original.relative_to(root)), str(copy.relative_to(root)))] = kind

    exact = root / "test" / "PNEUMONIA" / "person9001_bacteria_9001.jpeg"
    shutil.copyfile(pneumonia[0], exact)
    add(pneumonia[0], exact, "exact")

    with Image.open(normal[0]) as image:
        resized = image.resize((round(image.width * 0.7), round(image.height * 0.7)), Image.Resampling.BILINEAR)
    copy = root / "val" / "NORMAL" / "IM-9002-0001.jpeg"
    _save_jpeg(resized, copy, 95)
    add(normal[0], copy, "near")

    with Image.open(pneumonia[1]) as image:
        image.load()
        copy = root / "test" / "PNEUMONIA" / "person9003_virus_9003.jpeg"
        _save_jpeg(image, copy, 60)
    add(pneumonia[1], copy, "near")

    with Image.open(normal[1]) as image:
        brighter = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + 10, 0, 255).astype(np.uint8), image.mode)
    copy = root / "test" / "NORMAL" / "IM-9004-0001.jpeg"
    _save_jpeg(brighter, copy, 95)
    add(normal[1], copy, "near")

    # The patient leak: another picture of a patient who is in train, named as Kaggle names it.
    patient = patient_id(pneumonia[-1])
    leak = root / "test" / "PNEUMONIA" / f"{patient}_bacteria_9999.jpeg"
    _save_jpeg(render_image(np.random.default_rng([77, 1]), True, False, 520, 600), leak, 90)
    planted.patient = (patient, str(leak.relative_to(root)))

    uniform = root / "train" / "NORMAL" / "IM-9006-0001.jpeg"
    _save_jpeg(Image.new("L", (560, 560), 30), uniform, 90)
    wide = root / "train" / "PNEUMONIA" / "person9007_bacteria_9007.jpeg"
    _save_jpeg(render_image(np.random.default_rng([77, 2]), True, False, 520, 600).resize((900, 300)), wide, 90)
    planted.outliers = {str(uniform.relative_to(root)): "uniform", str(wide.relative_to(root)): "aspect ratio"}
    return planted
