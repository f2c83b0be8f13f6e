"""The NIH ChestX-ray14 scale: ``python -m pneumo.bench --table N``.

A synthetic set in NIH's layout (``Data_Entry_2017.csv``, official split lists,
``images/<patient>_<follow-up>.png``, grayscale PNGs of ``--table-side`` pixels, 256 by default where
NIH's are 1024) is written once and read through ``pneumo.data_table.TableDataModule`` with NIH's preset
and the memory-mapped disk cache. The run reports the preparation (table read + cache build,
``prepare_s``), the process's own memory with the mapped cache aside (``peak_rss_anon_mb``, sampled)
next to ``peak_rss_mb``, the decode workers' private memory, and the warm rate of ``--table-batches``
batches per epoch against the same interleaved compute ceiling as ``pneumo.bench``.

Like ``pneumo.bench``, nothing here may import MLflow, Hydra or OmegaConf.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from tqdm.auto import tqdm

from pneumo import synthetic
from pneumo.bench import (PROJECT_ROOT, Ceiling, ModelSpec, current_rss_mb, decode_pool_workers, decode_rate,
                          describe_device, fit_epochs, fixed_sample, load_average, log, peak_rss_mb, prepare,
                          resolve_device, resolve_precision)
from pneumo.images import decode_image

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
_TABLE_STREAM = 20         # seed stream tag, distinct from pneumo.synthetic's and synthetic_table's

TABLE_RESULT_KEYS = (
    "ceiling_img_s", "warm_img_s", "warm_over_ceiling", "first_epoch_img_s", "prepare_s", "table_read_s",
    "cache_build_s", "prepare_img_s", "prepare_workers", "decode_img_s", "peak_rss_mb", "peak_rss_anon_mb",
    "prepare_peak_rss_anon_mb", "peak_rss_children_mb", "decode_workers_peak_private_mb", "cache_mb",
    "n_rows", "n_images", "n_train", "n_val", "table_side", "nih_side", "image_size", "batch_size",
    "batches_per_epoch", "precision", "device", "torch",
)


def default_table_root(n_images: int, side: int) -> Path:
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
        picture = synthetic._render_image(rng, pneumonia, False, side, side)  # the project's chest pictures
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
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return None


def table_write_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


class MemorySampler:
    """Peaks that ru_maxrss cannot tell apart, sampled in a thread every `interval` seconds (Linux /proc).

    `anon_mb`: this process's anonymous memory (RssAnon: its own allocations, without the pages of
    the memory-mapped cache it has read or written, which the kernel can drop at will).
    `children_private_mb`: the largest private memory (Private_Clean + Private_Dirty) of any child
    process (decode pool, DataLoader workers), without the pages a forked child shares with this one.
    Both are kept per phase (`enter`), so the writer's pool is not taken for the decoders. A pool that
    lives less than the interval may go unseen.
    Where /proc is missing the peaks stay None.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.phase = interval, "start"
        self.anon_mb: dict[str, float] = {}
        self.children_private_mb: dict[str, float] = {}
        self._lock = threading.Lock()  # the thread and `enter` both sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def enter(self, phase: str) -> None:
        """Start a phase, with a sample at the end of the last one and at the start of this one: a phase
        shorter than the interval still has a reading."""
        self.sample()
        with self._lock:
            self.phase = phase
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        anon = _status_kb(Path("/proc/self/status"), "RssAnon")
        children = [kb for pid in _child_pids() if (kb := _private_kb(pid)) is not None]
        with self._lock:
            phase = self.phase
            if anon is not None:
                self.anon_mb[phase] = max(self.anon_mb.get(phase, 0.0), anon / 1024)
            if children:
                self.children_private_mb[phase] = max(self.children_private_mb.get(phase, 0.0),
                                                      max(children) / 1024)

    def peak(self, which: dict[str, float], *phases: str) -> float | None:
        values = [which[p] for p in (phases or tuple(which)) if p in which]
        return round(max(values), 1) if values else None


def _status_kb(path: Path, field: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _child_pids() -> list[int]:
    """Direct children of this process, from /proc/<pid>/stat (the ppid is the 2nd field after the name)."""
    me, found = os.getpid(), []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = Path(f"/proc/{entry.name}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                        found.append(int(entry.name))
    return found


def _private_kb(pid: int) -> int | None:
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    clean, dirty = _status_kb(rollup, "Private_Clean"), _status_kb(rollup, "Private_Dirty")
    return None if clean is None or dirty is None else clean + dirty


def run_table_bench(args: argparse.Namespace) -> dict[str, Any]:
    """The same measurement through `TableDataModule` on an NIH-layout set of `--table` images, with
    the disk cache (memory-mapped, as on a laptop) and `--table-batches` batches per epoch."""
    from pneumo.data_table import TableDataModule  # only the table bench needs it

    rss_at_start = current_rss_mb()
    load_at_start = load_average()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(args.seed)
    root = Path(args.table_root).expanduser() if args.table_root else default_table_root(args.table, args.table_side)

    with MemorySampler() as memory:
        memory.enter("write")
        log(f"NIH-layout table set of {args.table} images ({args.table_side}x{args.table_side} PNGs) at {root} "
            f"(written once; may take many minutes)")
        write_s = ensure_bench_table(root, args.table, args.table_side, seed=args.seed)
        log("table set ready" + (f", written in {write_s:.1f} s" if write_s is not None else " (already there)"))

        memory.enter("start")
        sample = fixed_sample(sorted((root / "images").glob("*.png")), args.decode_sample)
        for file in sample:
            file.read_bytes()  # decoding from the page cache, not the disk
        decode_img_s = decode_rate(partial(decode_image, size=args.image_size, channels=1), sample)
        ceiling = Ceiling(args.image_size, args.batch_size, device, precision, args.channels_last,
                          model=ModelSpec.read(args.model))
        log(f"ceiling burst (before the pipeline) on {device}, {precision}: "
            f"{ceiling.measure(args.ceiling_seconds):.1f} img/s")

        # The cache goes next to the data (a laptop's /tmp may be RAM), fresh, removed afterwards.
        cache_tmp = tempfile.mkdtemp(prefix="cache-", dir=root)
        try:
            datamodule = TableDataModule(
                csv=str(root / NIH_CSV), image_dir=str(root / "images"), id_column="Image Index",
                file_template="{Image Index}", label=NIH_LABEL, patient_column="Patient ID",
                official_split=NIH_OFFICIAL_SPLIT, name="bench_nih_table", image_size=args.image_size,
                channels=1, batch_size=args.batch_size, num_workers=args.workers, cache="disk",
                cache_dir=cache_tmp, seed=args.seed)
            memory.enter("prepare")
            start = time.perf_counter()
            records = datamodule.table()  # the CSV read and every listed file found
            table_read_s = time.perf_counter() - start
            log(f"table read in {table_read_s:.2f} s: {len(records)} usable images of {records.report['rows']} rows")
            prepared = prepare(datamodule)
            memory.enter("fit")
            timer, loader_workers = fit_epochs(datamodule, args, device, precision, ceiling, cache_tmp,
                                               limit_train_batches=args.table_batches)
            n_rows, n_images = records.report["rows"], len(records)
            del datamodule, records
            gc.collect()
        finally:
            shutil.rmtree(cache_tmp, ignore_errors=True)

    ceiling_img_s = float(np.mean(ceiling.samples))
    warm_img_s = sum(timer.images[1:]) / sum(timer.durations[1:])
    prepare_s = table_read_s + prepared.seconds
    return {
        "ceiling_img_s": round(ceiling_img_s, 3),
        "warm_img_s": round(warm_img_s, 3),
        "warm_over_ceiling": round(warm_img_s / ceiling_img_s, 4),
        # Epoch 1 includes the trainer's start-up: a burst of a few hundred batches makes that visible.
        "first_epoch_img_s": round(timer.images[0] / timer.durations[0], 3),
        "prepare_s": round(prepare_s, 3),  # reading the table + building the decode-once cache
        "table_read_s": round(table_read_s, 3),
        "cache_build_s": round(prepared.seconds, 3),
        "prepare_img_s": round(n_images / prepare_s, 3),
        "prepare_workers": decode_pool_workers(n_images),
        "decode_img_s": round(decode_img_s, 3),  # decode_image, one process, files in the page cache
        "write_s": None if write_s is None else round(write_s, 1),  # None: the set was already there
        "write_workers": table_write_workers(),
        "epoch_s": [round(s, 3) for s in timer.durations],
        "epoch_images": timer.images,
        "ceiling_samples_img_s": [round(r, 3) for r in ceiling.samples],
        "ceiling_spread": round((max(ceiling.samples) - min(ceiling.samples)) / ceiling_img_s, 3),
        # ru_maxrss: counts the pages of the memory-mapped cache this process wrote and read.
        "peak_rss_mb": round(peak_rss_mb(resource.RUSAGE_SELF), 1),
        "rss_at_start_mb": None if rss_at_start is None else round(rss_at_start, 1),  # after the imports
        # The process's own memory, mapped cache aside: the whole run, and the preparation alone.
        "peak_rss_anon_mb": memory.peak(memory.anon_mb),
        "prepare_peak_rss_anon_mb": memory.peak(memory.anon_mb, "prepare"),
        # Largest child by ru_maxrss (the writer's pool too when this run wrote the set), shared pages
        # included; and the decode workers' private memory alone, sampled during the preparation.
        "peak_rss_children_mb": round(peak_rss_mb(resource.RUSAGE_CHILDREN), 1),
        "decode_workers_peak_private_mb": memory.peak(memory.children_private_mb, "prepare"),
        "write_workers_peak_private_mb": memory.peak(memory.children_private_mb, "write"),
        "cache_mb": round(prepared.cache_bytes / 2 ** 20, 3),
        "n_rows": n_rows,
        "n_images": n_images,  # usable images (Pneumonia or No Finding): all decoded into the cache
        "n_train": prepared.n_train,
        "n_val": prepared.n_val,
        "table_side": args.table_side,
        "nih_side": NIH_SIDE,
        "side_note": (f"synthetic PNGs are {args.table_side}x{args.table_side}; NIH's are {NIH_SIDE}x{NIH_SIDE}, "
                      f"about {(NIH_SIDE / args.table_side) ** 2:.0f}x the pixels to decode per image"),
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "batches_per_epoch": args.table_batches,
        "epochs": args.epochs,
        "precision": precision,
        "channels_last": args.channels_last,
        "cache": "disk",
        "loader_workers": loader_workers,
        "device": describe_device(device),
        "load_avg_1m": [load_at_start, load_average()],
        "torch": torch.__version__,
        "lightning": L.__version__,
        "data_root": str(root),
    }
