"""The real training pipeline both benches time: the DataModule's cache build, then `Trainer.fit` of
`PneumoniaClassifier` with `BatchAugment(1.0)` on the device and a ceiling burst after each epoch.
"""
from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass
from functools import partial

import lightning as L
import torch

from pneumo.bench.machine import log
from pneumo.bench.measure import Ceiling, EpochTimer
from pneumo.bench.models import ModelSpec
from pneumo.data.datasets import CachedImages
from pneumo.training.augment import BatchAugment
from pneumo.training.module import PneumoniaClassifier


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
    """The real `Trainer.fit` of the `--model` network with a ceiling burst after each epoch; the timer, and
    the DataLoader workers the DataModule resolved --workers to (read off the loader that actually ran)."""
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
