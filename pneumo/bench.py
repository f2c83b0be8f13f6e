"""Is the data pipeline keeping the model fed?  ``python -m pneumo.bench``

One run, one machine, one JSON line on stdout (progress goes to stderr). It measures, in this order:

1. decode rates over a fixed sample of files, single process: Pillow full decode + resize
   (``decode_plain_img_s``) vs the project's draft-mode ``decode_image`` (``decode_draft_img_s``);
2. the compute ceiling (``ceiling_img_s``): forward + backward + Adam step of the seed CNN on float
   tensors already on the device, same batch size, precision and memory format. It is measured in
   this process in short bursts interleaved with the pipeline -- one before the cache build and one
   after every epoch, outside the epochs' timed windows -- and is the mean of the bursts, so the
   ceiling sees the same background load as the pipeline on a shared machine; ``ceiling_spread``
   ((max - min) / mean of the bursts) says how noisy the machine was during the run;
3. the cache build (``prepare_s``): ``ChestXrayDataModule.setup("fit")``, which decodes every JPEG
   of train/ once into the uint8 cache (the patient-grouped val split is carved out of train/);
4. the real training pipeline: ``lightning.Trainer.fit`` of ``PneumoniaClassifier(SeedCNN)`` with
   ``BatchAugment(1.0)`` on the device, for ``--epochs`` epochs. Epoch 1 is cold: ``cold_img_s`` is
   train images / (cache build + time from ``trainer.fit`` to the end of epoch 1, which includes the
   trainer's start-up and DataLoader worker start). The later epochs are warm: ``warm_img_s`` is
   train images x (epochs - 1) / their summed wall time (each from the end of the previous epoch's
   ceiling burst to its own end, so Lightning's work between epochs counts).

Ratios (``warm_over_ceiling``, ``cold_over_ceiling``) are what to compare across machines; the
absolute rates depend on the machine and on whatever else runs on it. What the warm ratio misses
from 1 is everything the ceiling leaves out: batch fetch, uint8->float, augmentation, Lightning.

Memory: ``peak_rss_mb`` is this process's peak, imports included (``rss_at_start_mb``: a CUDA build
of torch with Lightning holds ~0.8 GB before any work) and the ceiling's own model included;
``peak_rss_children_mb`` is the largest child (decode pool, DataLoader worker), counting the pages
it shares with this process after the fork.

``--table N`` measures the NIH ChestX-ray14 scale instead: a synthetic set in NIH's layout
(``Data_Entry_2017.csv``, official split lists, ``images/<patient>_<follow-up>.png``, grayscale PNGs of
``--table-side`` pixels, 256 by default where NIH's are 1024), written once, read through
``pneumo.data_table.TableDataModule`` with NIH's preset and the memory-mapped disk cache. It reports the
preparation (table read + cache build, ``prepare_s``), the process's own memory with the mapped cache
aside (``peak_rss_anon_mb``, sampled) next to ``peak_rss_mb``, the decode workers' private memory, and
the warm rate of ``--table-batches`` batches per epoch against the same interleaved ceiling.

Runs with torch, torchvision, lightning, torchmetrics, numpy, tqdm and Pillow only: nothing on the
import chain may pull in MLflow, Hydra or OmegaConf (so not ``pneumo.config`` either).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from pneumo import synthetic
from pneumo.data import IMAGE_SUFFIXES, ChestXrayDataModule, CachedImages
from pneumo.images import decode_image
from pneumo.models import SeedCNN
from pneumo.module import PneumoniaClassifier
from pneumo.synthetic import ensure_synthetic_dataset
from pneumo.transforms import BatchAugment

# Same as pneumo.config.PROJECT_ROOT, computed here so that OmegaConf is not imported.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Real Kaggle X-rays are 1-3 megapixels; the benchmark's synthetic stand-in matches that.
SYNTHETIC_MIN_SIDE, SYNTHETIC_MAX_SIDE = 1000, 1800
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")

RESULT_KEYS = (
    "ceiling_img_s", "cold_img_s", "warm_img_s", "warm_over_ceiling", "cold_over_ceiling",
    "decode_plain_img_s", "decode_draft_img_s", "prepare_s", "prepare_workers", "peak_rss_mb",
    "peak_rss_children_mb", "cache_mb", "n_images", "image_size", "batch_size", "precision", "device",
    "torch",
)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---- data ------------------------------------------------------------------------------------------
def default_data_root(n_images: int, min_side: int = SYNTHETIC_MIN_SIDE,
                      max_side: int = SYNTHETIC_MAX_SIDE) -> Path:
    suffix = "" if (min_side, max_side) == (SYNTHETIC_MIN_SIDE, SYNTHETIC_MAX_SIDE) else f"-{min_side}-{max_side}"
    return PROJECT_ROOT / ".cache" / f"bench-synthetic-{n_images}{suffix}"


def ensure_bench_data(root: Path, n_images: int, min_side: int = SYNTHETIC_MIN_SIDE,
                      max_side: int = SYNTHETIC_MAX_SIDE) -> Path:
    """The synthetic set, written once (a no-op when it is already there with these parameters).

    Only train/ is used (validation is carved out of it by patient), so val/ and test/ stay empty.
    """
    return ensure_synthetic_dataset(root, n_train=n_images, n_val=0, n_test=0,
                                    min_side=min_side, max_side=max_side)


def list_images(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))


def fixed_sample(files: Sequence[Path], count: int) -> list[Path]:
    """`count` files evenly spread over the sorted list (both classes), the same on every run."""
    if len(files) <= count:
        return list(files)
    step = len(files) / count
    return [files[int(i * step)] for i in range(count)]


# ---- decoding --------------------------------------------------------------------------------------
def decode_plain(path: str | Path, size: int, channels: int = 1) -> np.ndarray:
    """The naive way: decode the whole JPEG at full size, then resize it."""
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        array = np.array(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def decode_rate(decode: Any, files: Sequence[Path]) -> float:
    decode(files[0])  # first-call costs (library loading) are not decoding
    start = time.perf_counter()
    for file in files:
        decode(file)
    return len(files) / (time.perf_counter() - start)


def decode_rates(files: Sequence[Path], size: int, channels: int = 1) -> tuple[float, float]:
    """(plain, draft) images per second, single process, files already in the OS page cache."""
    for file in files:
        Path(file).read_bytes()  # both decoders then read from memory, not from the disk
    plain = decode_rate(partial(decode_plain, size=size, channels=channels), files)
    draft = decode_rate(partial(decode_image, size=size, channels=channels), files)
    return plain, draft


# ---- compute ceiling -------------------------------------------------------------------------------
def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Ceiling:
    """Training steps of the seed CNN on an in-memory float batch already on the device.

    The same step as `PneumoniaClassifier.training_step` under Lightning: forward and loss under
    autocast for mixed precision, backward, Adam step, gradients set to None; same batch size,
    precision and memory format. No data loading, no uint8->float conversion, no augmentation: what
    the model alone can do. `measure` runs one timed burst and keeps its rate in `samples`.
    """

    def __init__(self, image_size: int, batch_size: int, device: torch.device, precision: str,
                 channels_last: bool, in_channels: int = 3) -> None:
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self.model = SeedCNN(image_size, in_channels=in_channels).to(device)
        self.x = torch.rand(batch_size, in_channels, image_size, image_size, device=device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 2, (batch_size,), device=device).float()
        self.loss = nn.BCEWithLogitsLoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.scaler = (torch.amp.GradScaler(device.type) if precision == "16-mixed" and device.type == "cuda"
                       else None)
        self.model.train()
        self.samples: list[float] = []

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            loss = self.loss(self.model(self.x), self.y)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def measure(self, seconds: float, warmup: int = 3, min_steps: int = 3) -> float:
        """Images per second over at least `seconds` and `min_steps` steps, after `warmup` untimed ones."""
        with torch.enable_grad():
            for _ in range(warmup):
                self.step()
            synchronize(self.device)
            steps, start = 0, time.perf_counter()
            while steps < min_steps or time.perf_counter() - start < seconds:
                self.step()
                steps += 1
                if self.device.type == "cuda" and steps % 20 == 0:
                    synchronize(self.device)  # keeps the clock checks honest: the queue cannot run far ahead
            synchronize(self.device)
            rate = steps * self.batch_size / (time.perf_counter() - start)
        self.samples.append(rate)
        return rate


# ---- the real pipeline -----------------------------------------------------------------------------
class EpochTimer(L.Callback):
    """Per-epoch wall times of the real fit, with a ceiling burst between epochs (not timed as epoch).

    An epoch runs from the end of the previous burst (for the first: `fit_start`, set by the caller
    just before `trainer.fit`) to `on_train_epoch_end`, after the device has finished its work, so
    it counts everything Lightning does between epochs, DataLoader iterator resets included.
    """

    def __init__(self, device: torch.device, ceiling: Ceiling | None = None, seconds: float = 5.0) -> None:
        self.device, self.ceiling, self.seconds = device, ceiling, seconds
        self.fit_start: float | None = None
        self.first_start: float | None = None
        self.durations: list[float] = []
        self.images: list[int] = []  # trained on per epoch: fewer than the split when batches are limited
        self._resume: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.first_start is None:
            synchronize(self.device)
            self.first_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx == 0:
            self.images.append(0)
        self.images[-1] += len(batch[1])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(self.device)
        end = time.perf_counter()
        start = self._resume if self._resume is not None else self.fit_start
        if start is None:
            raise RuntimeError("EpochTimer.fit_start must be set before trainer.fit")
        self.durations.append(end - start)
        message = f"epoch {len(self.durations)}: {self.durations[-1]:.2f} s"
        if self.ceiling is not None:
            message += f"; ceiling burst {self.ceiling.measure(self.seconds):.1f} img/s"
        log(message)
        self._resume = time.perf_counter()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto': 32-true on the CPU; bf16-mixed on a GPU that has bf16, else 16-mixed."""
    if name != "auto":
        return name
    if device.type != "cuda":
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"


def decode_pool_workers(n_files: int) -> int:
    """Processes `pneumo.cache.decode_all` uses for `n_files` when the DataModule calls it (no `workers`):
    the DataModule decodes the whole train/ folder in one call."""
    return 1 if n_files < 64 else (os.cpu_count() or 1)


def peak_rss_mb(who: int) -> float:
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(who).ru_maxrss * scale / 2 ** 20


def current_rss_mb() -> float | None:
    """This process's resident set now (Linux); None where /proc is missing."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def load_average() -> float | None:
    """1-minute load average: how busy the (shared) machine was, other users included."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


@dataclass
class Prepared:
    """What `prepare` measured."""

    seconds: float
    n_train: int
    n_val: int
    cache_bytes: int


def prepare(datamodule: L.LightningDataModule) -> Prepared:
    """The cache build: `datamodule.setup("fit")`, timed (fit's own setup call then finds the work done)."""
    log(f"building the {datamodule.cache} cache (datamodule.setup('fit'))")
    start = time.perf_counter()
    datamodule.setup("fit")
    seconds = time.perf_counter() - start
    n_train, n_val = len(datamodule.datasets["train"]), len(datamodule.datasets["val"])
    # Splits may share one decoded array (train and a patient-split val view the same cache).
    arrays = {id(d.pixels): d.pixels for d in datamodule.datasets.values() if isinstance(d, CachedImages)}
    cache_bytes = sum(a.nbytes for a in arrays.values())
    log(f"cache built in {seconds:.2f} s: {n_train} train + {n_val} val images, {cache_bytes / 2**20:.1f} MB")
    return Prepared(seconds, n_train, n_val, cache_bytes)


def fit_epochs(datamodule: L.LightningDataModule, args: argparse.Namespace, device: torch.device, precision: str,
               ceiling: Ceiling, root_dir: str, limit_train_batches: int | None = None) -> tuple[EpochTimer, int | None]:
    """The real `Trainer.fit` of the seed CNN with a ceiling burst after each epoch; the timer, and the
    DataLoader workers the DataModule resolved --workers to (read off the loader that actually ran)."""
    module = PneumoniaClassifier(SeedCNN(args.image_size), optimizer=partial(torch.optim.Adam, lr=1e-3),
                                 augment=BatchAugment(1.0), channels_last=args.channels_last)
    timer = EpochTimer(device, ceiling, args.ceiling_seconds)
    trainer = L.Trainer(
        accelerator=device.type, devices=1, precision=precision, max_epochs=args.epochs,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer], default_root_dir=root_dir,
        limit_train_batches=limit_train_batches)
    log(f"fitting {args.epochs} epochs (--workers {args.workers})"
        + (f", {limit_train_batches} batches each" if limit_train_batches else ""))
    timer.fit_start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    if len(timer.durations) != args.epochs:
        raise RuntimeError(f"trainer ran {len(timer.durations)} of {args.epochs} epochs")
    loader_workers = getattr(trainer.train_dataloader, "num_workers", None)
    datamodule.trainer = None  # the trainer holds the loaders: this lets them go with it
    del trainer, module  # shuts the DataLoader workers down before the RSS reading
    gc.collect()
    return timer, loader_workers


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    # What the imports alone hold (~0.8 GB with a CUDA build of torch and Lightning); peak_rss_mb
    # minus this is what the run added: the cache and the training memory of the two models.
    rss_at_start = current_rss_mb()
    load_at_start = load_average()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(args.seed)

    if args.data_root:
        root = Path(args.data_root).expanduser()
        synthetic = False
    else:
        root = default_data_root(args.n_images, args.synthetic_min_side, args.synthetic_max_side)
        log(f"synthetic set of {args.n_images} train images at {root} (written once; may take minutes)")
        start = time.perf_counter()
        ensure_bench_data(root, args.n_images, args.synthetic_min_side, args.synthetic_max_side)
        log(f"synthetic set ready in {time.perf_counter() - start:.1f} s")
        synthetic = True

    train_files = list_images(root / "train")
    if not train_files:
        raise SystemExit(f"no training images under {root / 'train'}")
    sample = fixed_sample(train_files, args.decode_sample)
    log(f"decoding {len(sample)} files, plain then draft")
    decode_plain_img_s, decode_draft_img_s = decode_rates(sample, args.image_size)

    # The ceiling is measured in bursts interleaved with the pipeline, in this process: one before
    # the cache build and one after each epoch (outside the epoch's timed window). On a shared,
    # noisy machine the bursts see the same background load as the epochs around them; the ceiling
    # is their mean, and their spread says how far the ratios can be trusted.
    ceiling = Ceiling(args.image_size, args.batch_size, device, precision, args.channels_last)
    log(f"ceiling burst (before the pipeline) on {device}, {precision}: "
        f"{ceiling.measure(args.ceiling_seconds):.1f} img/s")

    cache_tmp = tempfile.mkdtemp(prefix="pneumo-bench-") if args.cache == "disk" else None
    try:
        datamodule = ChestXrayDataModule(
            str(root), image_size=args.image_size, batch_size=args.batch_size, num_workers=args.workers,
            val_strategy="patient", cache=args.cache, cache_dir=cache_tmp, seed=args.seed)
        prepared = prepare(datamodule)
        timer, loader_workers = fit_epochs(datamodule, args, device, precision, ceiling,
                                           cache_tmp or tempfile.gettempdir())
        del datamodule
        gc.collect()
    finally:
        if cache_tmp:
            shutil.rmtree(cache_tmp, ignore_errors=True)
    prepare_s, n_train, n_val, cache_bytes = prepared.seconds, prepared.n_train, prepared.n_val, prepared.cache_bytes

    ceiling_img_s = float(np.mean(ceiling.samples))
    # Cold: everything from the JPEG files to the end of epoch 1 (trainer start-up and loader
    # worker start included). Warm: the later epochs, reading the cache.
    first_epoch_s = timer.durations[0]
    cold_img_s = n_train / (prepare_s + first_epoch_s)
    warm_img_s = n_train * (args.epochs - 1) / sum(timer.durations[1:])
    # Diagnostic for noisy machines: each epoch against the mean of the two bursts around it
    # (epoch 1 with the cache build, as in cold_img_s).
    local = [n_train / (duration + (prepare_s if k == 0 else 0.0)) / ((ceiling.samples[k] + ceiling.samples[k + 1]) / 2)
             for k, duration in enumerate(timer.durations)]

    return {
        "ceiling_img_s": round(ceiling_img_s, 3),
        "cold_img_s": round(cold_img_s, 3),
        "warm_img_s": round(warm_img_s, 3),
        "warm_over_ceiling": round(warm_img_s / ceiling_img_s, 4),
        "cold_over_ceiling": round(cold_img_s / ceiling_img_s, 4),
        "decode_plain_img_s": round(decode_plain_img_s, 3),
        "decode_draft_img_s": round(decode_draft_img_s, 3),
        "draft_speedup": round(decode_draft_img_s / decode_plain_img_s, 2),
        "prepare_s": round(prepare_s, 3),
        "prepare_workers": decode_pool_workers(len(train_files)),
        "first_epoch_s": round(first_epoch_s, 3),
        "fit_startup_s": round(timer.first_start - timer.fit_start, 3),
        "epoch_s": [round(s, 3) for s in timer.durations],
        # Bursts: before the cache build, then after each epoch. spread = (max - min) / mean.
        "ceiling_samples_img_s": [round(r, 3) for r in ceiling.samples],
        "ceiling_spread": round((max(ceiling.samples) - min(ceiling.samples)) / ceiling_img_s, 3),
        "epoch_over_local_ceiling": [round(r, 3) for r in local],
        "peak_rss_mb": round(peak_rss_mb(resource.RUSAGE_SELF), 1),
        "rss_at_start_mb": None if rss_at_start is None else round(rss_at_start, 1),  # after the imports
        # Largest single child (decode pool, DataLoader workers; and the synthetic writer's pool when
        # this run wrote the set), counted with the pages it shares with this process.
        "peak_rss_children_mb": round(peak_rss_mb(resource.RUSAGE_CHILDREN), 1),
        "cache_mb": round(cache_bytes / 2 ** 20, 3),
        "n_images": len(train_files),
        "n_train": n_train,
        "n_val": n_val,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "precision": precision,
        "channels_last": args.channels_last,
        "cache": args.cache,
        "loader_workers": loader_workers,
        "decode_sample": len(sample),
        "device": describe_device(device),
        "load_avg_1m": [load_at_start, load_average()],  # at the start and at the end of the run
        "torch": torch.__version__,
        "lightning": L.__version__,
        "data_root": str(root),
        "synthetic": synthetic,
    }


# ---- the NIH-scale table set -----------------------------------------------------------------------
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
        ceiling = Ceiling(args.image_size, args.batch_size, device, precision, args.channels_last)
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


# ---- command line ----------------------------------------------------------------------------------
def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be >= 0 or 'auto'")
    return number


def _positive(kind: type, minimum: float = 1) -> Any:
    def parse(value: str) -> Any:
        number = kind(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return number
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.bench",
        description="Throughput of the decode-once cache + on-device augmentation pipeline against the "
                    "model's compute ceiling. Prints one JSON line on stdout; progress goes to stderr.")
    parser.add_argument("--data-root", default=None,
                        help="Kaggle-layout data set (ROOT/train/{NORMAL,PNEUMONIA}); default: a synthetic "
                             "set of 1-3 megapixel JPEGs written once under <project>/.cache/bench-synthetic-<n>")
    parser.add_argument("--n-images", type=_positive(int, 8), default=1000,
                        help="train images in the synthetic set (default 1000; the real train set has 5216)")
    parser.add_argument("--synthetic-min-side", type=_positive(int, 16), default=SYNTHETIC_MIN_SIDE,
                        help=argparse.SUPPRESS)
    parser.add_argument("--synthetic-max-side", type=_positive(int, 16), default=SYNTHETIC_MAX_SIDE,
                        help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=_positive(int, 8), default=128)
    parser.add_argument("--batch-size", type=_positive(int), default=32)
    parser.add_argument("--epochs", type=_positive(int, 2), default=3,
                        help="epoch 1 is cold (with the cache build), the rest warm (default 3; at least 2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: 32-true on the CPU, bf16-mixed on a GPU (16-mixed without bf16)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--workers", type=_workers, default="auto",
                        help="DataLoader workers (default: the DataModule's 'auto', half the cores)")
    parser.add_argument("--cache", choices=("memory", "disk"), default=None,
                        help="memory (default) or disk (a fresh temporary folder, removed afterwards); "
                             "--table always uses disk")
    parser.add_argument("--ceiling-seconds", type=_positive(float, 0.0), default=5.0,
                        help="seconds of each ceiling burst (one before the cache build, one after each epoch)")
    parser.add_argument("--decode-sample", type=_positive(int), default=100,
                        help="files in the fixed decode-rate sample")
    parser.add_argument("--seed", type=int, default=0)
    table = parser.add_argument_group("NIH-scale table set (pneumo.data_table.TableDataModule)")
    table.add_argument("--table", type=_positive(int, 40), default=None, metavar="N",
                       help="bench an NIH ChestX-ray14-layout set of N images (Data_Entry_2017.csv, official "
                            "split lists, images/<patient>_<follow-up>.png), written once, through the table "
                            "DataModule with the memory-mapped disk cache")
    table.add_argument("--table-root", default=None,
                       help="where the table set is (written once); default <project>/.cache/bench-table-<N>-<side>")
    table.add_argument("--table-side", type=_positive(int, 16), default=256,
                       help="side of its grayscale PNGs (default 256; NIH's are 1024, 16x the pixels to write "
                            "and decode: 100,000 of them would take hours and ~50 GB here)")
    table.add_argument("--table-batches", type=_positive(int), default=100,
                       help="training batches per epoch (default 100): a burst, not the whole set, so the "
                            "warm rate is measured in minutes at any N")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked; --cache resolved (memory for the folder bench, disk for --table)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.table is not None:
        if args.cache == "memory":
            parser.error("--table measures the memory-mapped disk cache (the laptop case): leave --cache out")
        if args.data_root:
            parser.error("--table writes its own set; --data-root is for the Kaggle folder layout")
    args.cache = args.cache or ("disk" if args.table is not None else "memory")
    return args


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Everything written to stdout (Python or C level, this process or its children) goes to stderr."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        saved = None
    try:
        if saved is not None:
            os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with stdout_to_stderr():
        result = run_table_bench(args) if args.table is not None else run_bench(args)
    bad = [key for key in (TABLE_RESULT_KEYS if args.table is not None else RESULT_KEYS) if key not in result]
    if bad:  # a programming error, not a measurement
        raise RuntimeError(f"result lacks {bad}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
