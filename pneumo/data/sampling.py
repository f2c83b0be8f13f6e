"""Batch order that depends only on (seed, epoch): resumable, reproducible and sharded across processes."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class EpochBatches(Sampler[list[int]]):
    """Lists of dataset indices, one list per batch.

    Epoch e is drawn from a generator seeded with (seed, e), so a run resumed at epoch e sees the same
    batches as one that never stopped. With `weights`, indices are drawn with replacement (class-balanced
    sampling). Under DDP each process takes every world_size-th index of the same order, which is why
    Lightning's own DistributedSampler is off. Training order (`shuffle=True`) is padded by wrapping so
    every process takes as many steps (DDP's gradient sync needs that); evaluation order is not padded,
    so every image is scored exactly once and a split's figures do not depend on the number of
    processes (the processes then hold one image more or less; the metrics gather copes with that).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, weights: torch.Tensor | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be >= 1")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.weights, self.rank, self.world_size = weights, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of every epoch."""
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
        if self.shuffle:
            return torch.randperm(self.n, generator=generator)
        return torch.arange(self.n)

    def _shard(self, order: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return order
        if not self.shuffle:
            return order[self.rank:: self.world_size]
        per_rank = -(-len(order) // self.world_size)
        padded = torch.cat([order, order[: per_rank * self.world_size - len(order)]])
        return padded[self.rank:: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        order = self._shard(self._order())
        for start in range(0, len(order), self.batch_size):
            yield order[start: start + self.batch_size].tolist()

    def __len__(self) -> int:
        if self.shuffle:
            per_rank = -(-self.n // self.world_size)
        else:
            per_rank = len(range(self.rank, self.n, self.world_size))
        return -(-per_rank // self.batch_size)
