"""Is the data pipeline keeping the model fed?  ``python -m pneumo.bench``

One run, one machine, one JSON line on stdout (progress goes to stderr). It measures, in this order:

1. decode rates over a fixed sample of files, single process: Pillow full decode + resize
   (``decode_plain_img_s``) vs the project's draft-mode ``decode_image`` (``decode_draft_img_s``);
2. the compute ceiling (``ceiling_img_s``): forward + backward + Adam step of the same model on float
   tensors already on the device, same batch size, precision and memory format. It is measured in
   this process in short bursts interleaved with the pipeline -- one before the cache build and one
   after every epoch, outside the epochs' timed windows -- and is the mean of the bursts, so the
   ceiling sees the same background load as the pipeline on a shared machine; ``ceiling_spread``
   ((max - min) / mean of the bursts) says how noisy the machine was during the run;
3. the cache build (``prepare_s``): ``ChestXrayDataModule.setup("fit")``, which decodes every JPEG
   of train/ once into the uint8 cache (the patient-grouped val split is carved out of train/);
4. the real training pipeline: ``lightning.Trainer.fit`` of ``PneumoniaClassifier`` (the seed CNN, or
   ``--model`` any config of ``conf/model``, every layer trained, at its input size) with
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

``--table N`` measures the NIH ChestX-ray14 scale instead: see ``pneumo.bench_table``.

Runs with torch, torchvision, lightning, torchmetrics, numpy, tqdm and Pillow only: nothing on the
import chain may pull in MLflow, Hydra or OmegaConf (so not ``pneumo.config`` either).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import nn

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


@dataclass
class ModelSpec:
    """A model config's name and input (conf/model/<name>.yaml): what the bench trains and at what size."""

    name: str
    image_size: int
    mean: list[float] | None
    std: list[float] | None

    @classmethod
    def read(cls, name: str) -> "ModelSpec":
        import yaml  # PyYAML, a Lightning dependency: the configs are read without OmegaConf

        path = PROJECT_ROOT / "conf" / "model" / f"{name}.yaml"
        if not path.is_file():
            choices = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise SystemExit(f"--model {name}: no {path.name} in conf/model; choose one of {', '.join(choices)}")
        config = yaml.safe_load(path.read_text())
        return cls(name, int(config["image_size"]), config.get("mean"), config.get("std"))

    def build(self, image_size: int) -> nn.Module:
        """The network, untrained: speed does not depend on the weights, and nothing is downloaded."""
        if self.name == "baseline":
            return SeedCNN(image_size)
        from pneumo.backbones import PretrainedClassifier

        return PretrainedClassifier(self.name, pretrained=False)


class Ceiling:
    """Training steps of the seed CNN on an in-memory float batch already on the device.

    The same step as `PneumoniaClassifier.training_step` under Lightning: forward and loss under
    autocast for mixed precision, backward, Adam step, gradients set to None; same batch size,
    precision and memory format. No data loading, no uint8->float conversion, no augmentation: what
    the model alone can do. `measure` runs one timed burst and keeps its rate in `samples`.
    """

    def __init__(self, image_size: int, batch_size: int, device: torch.device, precision: str,
                 channels_last: bool, in_channels: int = 3, model: ModelSpec | None = None) -> None:
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self.model = (model.build(image_size) if model else SeedCNN(image_size, in_channels=in_channels)).to(device)
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
    spec = ModelSpec.read(args.model)
    module = PneumoniaClassifier(spec.build(args.image_size), optimizer=partial(torch.optim.Adam, lr=1e-3),
                                 augment=BatchAugment(1.0), channels_last=args.channels_last,
                                 mean=spec.mean, std=spec.std)
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
    ceiling = Ceiling(args.image_size, args.batch_size, device, precision, args.channels_last,
                      model=ModelSpec.read(args.model))
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
        "model": args.model,
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
    parser.add_argument("--model", default="baseline",
                        help="a config of conf/model (baseline, efficientnet_lite0, resnet18, resnet50, densenet121): "
                             "trained whole (every layer), untrained weights; its input size is the default")
    parser.add_argument("--image-size", type=_positive(int, 8), default=None,
                        help="default: the model config's (128 for the baseline, 224 for the pretrained backbones)")
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
    args.image_size = args.image_size or ModelSpec.read(args.model).image_size
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
        if args.table is not None:
            from pneumo.bench_table import TABLE_RESULT_KEYS, run_table_bench  # it imports this module
            result, keys = run_table_bench(args), TABLE_RESULT_KEYS
        else:
            result, keys = run_bench(args), RESULT_KEYS
    bad = [key for key in keys if key not in result]
    if bad:  # a programming error, not a measurement
        raise RuntimeError(f"result lacks {bad}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
