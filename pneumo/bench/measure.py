"""What both benches time: decode rates over a fixed sample, the model-only compute ceiling, and the
per-epoch wall times of a real `Trainer.fit` with a ceiling burst between epochs.
"""
from __future__ import annotations

import contextlib
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import nn

from pneumo.bench.machine import log
from pneumo.bench.models import ModelSpec
from pneumo.data.readers import read_image
from pneumo.models.seed_cnn import SeedCNN


# ---- decoding --------------------------------------------------------------------------------------
def fixed_sample(files: Sequence[Any], count: int) -> list[Any]:
    """`count` files evenly spread over the sorted list (both classes), the same on every run."""
    if len(files) <= count:
        return list(files)
    step = len(files) / count
    return [files[int(i * step)] for i in range(count)]


def decode_plain(path: str | Path, size: int, channels: int = 1) -> np.ndarray:
    """The naive way: decode the whole JPEG at full size, then resize it."""
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        array = np.array(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def decode_rate(decode: Callable[[Any], Any], files: Sequence[str | Path]) -> float:
    """Files decoded per second by `decode`, one process, after one untimed call."""
    decode(files[0])  # first-call costs (library loading) are not decoding
    start = time.perf_counter()
    for file in files:
        decode(file)
    return len(files) / (time.perf_counter() - start)


def read_into_page_cache(files: Sequence[str | Path]) -> None:
    """Reads every file once, so that decoders timed next read from memory, not from the disk."""
    for file in files:
        Path(file).read_bytes()


def decode_rates(files: Sequence[str | Path], size: int, channels: int = 1) -> tuple[float, float]:
    """(plain, draft) images per second, single process, files already in the OS page cache."""
    read_into_page_cache(files)  # both decoders then read from memory, not from the disk
    plain = decode_rate(partial(decode_plain, size=size, channels=channels), files)
    draft = decode_rate(partial(read_image, size=size, channels=channels), files)
    return plain, draft


# ---- compute ceiling -------------------------------------------------------------------------------
def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast for the mixed precisions, a no-op context for 32-true."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Waits for the GPU's queued work (a clock read before it would time the queueing only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Ceiling:
    """Training steps of the model on an in-memory float batch already on the device.

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
        """One training step on the fixed batch."""
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

    def summary(self) -> tuple[float, float]:
        """(mean rate of the bursts, (max - min) / mean): the ceiling and how noisy the machine was."""
        mean = float(np.mean(self.samples))
        return mean, (max(self.samples) - min(self.samples)) / mean


# ---- the real pipeline's epochs --------------------------------------------------------------------
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
