"""The NIH ChestX-ray14-layout set the table bench reads: its layout, the project's preset for it, and
the synthetic set written once.

    root/Data_Entry_2017.csv                    Image Index,Finding Labels,Follow-up #,Patient ID
    root/train_val_list.txt, root/test_list.txt the official split, by patient
    root/images/<8-digit patient>_<3-digit follow-up>.png

The pictures are the project's synthetic chest pictures (`pneumo.demo.render`), grayscale PNGs of any
side (NIH's are 1024).
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pneumo.demo.render import render_image
from pneumo.paths import PROJECT_ROOT

# NIH ChestX-ray14's layout and the project's preset for it (conf/data/nih_pneumonia.yaml).
NIH_CSV = "Data_Entry_2017.csv"
NIH_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID")
NIH_OFFICIAL_SPLIT = {"train": "train_val_list.txt", "test": "test_list.txt"}
NIH_LABEL = {"rule": "findings", "column": "Finding Labels", "separator": "|", "positive": "Pneumonia",
             "negative": ["No Finding"], "other": "exclude"}
NIH_SIDE = 1024  # NIH's PNGs are 1024x1024 8-bit grayscale
NIH_OTHER_FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
                      "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumothorax")
# Shares of images with Pneumonia (alone or with other findings) and with No Finding; the rest have
# other findings only, which the preset excludes. More usable images than NIH's 55 % (60,361 No
# Finding + 1,431 Pneumonia of 112,120), so the decode-once build is no smaller than NIH's.
TABLE_SHARES = (0.05, 0.80)
TABLE_TEST_PATIENTS = 0.2  # the official test list holds about this share of the patients
TABLE_FORMAT = 1           # bump when the table's content or naming changes: stored sets are rewritten
TABLE_MARKER = ".bench_table.json"
_TABLE_STREAM = 20         # seed stream tag, distinct from pneumo.demo.synthetic's and synthetic_table's


def default_table_root(n_images: int, side: int) -> Path:
    """Where the table set of these parameters is kept: <project>/.cache/bench-table-<n>-<side>."""
    return PROJECT_ROOT / ".cache" / f"bench-table-{n_images}-{side}"


def plan_table(n_images: int, seed: int = 0) -> tuple[list[tuple[str, str, int, int]], set[int]]:
    """NIH-like rows (Image Index, Finding Labels, Follow-up #, Patient ID) and the test patients.

    Images are `<patient:08d>_<follow-up:03d>.png`, a few per patient (NIH: 3.6 on average), so the
    patient-grouped splits have whole patients to move. Cheap: no pixels.
    """
    rng = np.random.default_rng([seed, _TABLE_STREAM, 0])
    rows: list[tuple[str, str, int, int]] = []
    test_patients: set[int] = set()
    patient = 0
    while len(rows) < n_images:
        patient += 1
        if rng.random() < TABLE_TEST_PATIENTS:
            test_patients.add(patient)
        for follow_up in range(min(int(rng.geometric(0.3)), n_images - len(rows))):
            draw = rng.random()
            others = sorted(rng.choice(NIH_OTHER_FINDINGS, size=int(rng.integers(1, 3)), replace=False).tolist())
            if draw < TABLE_SHARES[0]:
                findings = "|".join(sorted(["Pneumonia"] + (others[:1] if rng.random() < 0.4 else [])))
            elif draw < sum(TABLE_SHARES):
                findings = "No Finding"
            else:
                findings = "|".join(others)
            rows.append((f"{patient:08d}_{follow_up:03d}.png", findings, follow_up, patient))
    return rows, test_patients


def _write_table_images(task: tuple[Path, int, int, list[tuple[int, str, bool]]]) -> int:
    """Render and save one chunk of the table's PNGs (top-level, for the process pool).

    Each file is written under a temporary name and renamed, and files already there are kept, so an
    interrupted write goes on where it stopped.
    """
    folder, side, seed, items = task
    for index, name, pneumonia in items:
        path = folder / name
        if path.exists():
            continue
        rng = np.random.default_rng([seed, _TABLE_STREAM, 1, index])
        picture = render_image(rng, pneumonia, False, side, side)  # the project's chest pictures
        temporary = path.with_name(name + ".tmp")
        picture.save(temporary, format="PNG")
        os.replace(temporary, path)
    return len(items)


def ensure_bench_table(root: Path, n_images: int, side: int, seed: int = 0) -> float | None:
    """The NIH-layout table set under `root`, written once; seconds spent writing, None when it was there.

        root/Data_Entry_2017.csv                    Image Index,Finding Labels,Follow-up #,Patient ID
        root/train_val_list.txt, root/test_list.txt the official split, by patient
        root/images/<8-digit patient>_<3-digit follow-up>.png

    The PNGs are written by one process per core with a progress bar; a marker written last says the
    set is complete, and a rerun after an interruption writes only the files still missing.
    """
    marker = {"format": TABLE_FORMAT, "n_images": n_images, "side": side, "seed": seed}
    if _read_marker(root / TABLE_MARKER) == marker:
        return None
    start = time.perf_counter()
    images = root / "images"
    # Files of an interrupted write with these parameters are kept; of any other set of ours, removed.
    if any(_read_marker(root / name) not in (None, marker) for name in (TABLE_MARKER, TABLE_MARKER + ".writing")):
        shutil.rmtree(images, ignore_errors=True)
    (root / TABLE_MARKER).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / (TABLE_MARKER + ".writing")).write_text(json.dumps(marker))
    images.mkdir(parents=True, exist_ok=True)
    rows, test_patients = plan_table(n_images, seed)
    with open(root / NIH_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(NIH_COLUMNS)
        writer.writerows(rows)
    for side_name, wanted in (("train", False), ("test", True)):
        names = [name for name, _, _, patient in rows if (patient in test_patients) == wanted]
        (root / NIH_OFFICIAL_SPLIT[side_name]).write_text("\n".join(names) + "\n")

    items = [(index, name, "Pneumonia" in findings) for index, (name, findings, _, _) in enumerate(rows)]
    chunk = 200
    tasks = [(images, side, seed, items[first:first + chunk]) for first in range(0, len(items), chunk)]
    workers = table_write_workers()
    progress = tqdm(total=len(items), desc="writing table PNGs", unit="img", dynamic_ncols=True, file=sys.stderr)
    if workers == 1:
        for task in tasks:
            progress.update(_write_table_images(task))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for written in pool.map(_write_table_images, tasks):
                progress.update(written)
    progress.close()
    (root / TABLE_MARKER).write_text(json.dumps(marker))
    (root / (TABLE_MARKER + ".writing")).unlink()
    return time.perf_counter() - start


def _read_marker(path: Path) -> dict[str, Any] | None:
    """A marker file's parameters; None when it is missing or unreadable."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return None


def table_write_workers() -> int:
    """Processes writing the PNGs: one per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))
