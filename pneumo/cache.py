"""Decode-once cache: every JPEG is decoded a single time into a uint8 array of small images.

Decoding a 1-3 megapixel JPEG costs far more than the CNN's forward pass at 128x128, so training
epochs read this array instead of the files. The array lives in memory, or in a memory-mapped .npy
under a cache folder, keyed by the file list, sizes, mtimes and the decode settings, so that any
change to the files builds a new one.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from pneumo.images import DECODER_VERSION, decode_image


def cache_key(files: Sequence[str | Path], size: int, channels: int) -> str:
    """A digest of what the cache content depends on: paths, byte sizes, mtimes and decode settings."""
    digest = hashlib.sha256(json.dumps({"size": size, "channels": channels,
                                        "decoder": DECODER_VERSION}).encode())
    for file in files:
        stat = os.stat(file)
        digest.update(f"{os.path.abspath(file)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def decode_all(files: Sequence[str | Path], size: int, channels: int, *, cache_dir: str | Path | None = None,
               workers: int | None = None, description: str = "decoding") -> np.ndarray:
    """uint8 array (N, channels, size, size) of the files, decoded once.

    With `cache_dir`, the array is a read-only memory map of `<cache_dir>/<key>.npy`, reused by every
    later run while the files are unchanged; without it, an in-memory array.
    """
    shape = (len(files), channels, size, size)
    target: Path | None = None
    if cache_dir is not None:
        target = Path(cache_dir) / f"{cache_key(files, size, channels)}.npy"
        if target.exists():
            cached = np.load(target, mmap_mode="r")
            if cached.shape == shape:
                return cached
        target.parent.mkdir(parents=True, exist_ok=True)
        partial_path = target.with_suffix(f".{os.getpid()}.partial")
        array = np.lib.format.open_memmap(partial_path, mode="w+", dtype=np.uint8, shape=shape)
    else:
        array = np.empty(shape, dtype=np.uint8)

    _fill(array, files, size, channels, workers, description)

    if target is None:
        return array
    array.flush()
    del array
    os.replace(partial_path, target)  # atomic: a reader never sees a half-written cache
    return np.load(target, mmap_mode="r")


def _fill(array: np.ndarray, files: Sequence[str | Path], size: int, channels: int,
          workers: int | None, description: str) -> None:
    """Decode into `array` in parallel processes, in file order, with a progress bar."""
    workers = workers or os.cpu_count() or 1
    decode = partial(decode_image, size=size, channels=channels)
    progress = tqdm(total=len(files), desc=description, unit="img", leave=False, dynamic_ncols=True)
    if workers == 1 or len(files) < 64:
        for index, file in enumerate(files):
            array[index] = decode(file)
            progress.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            chunk = max(1, min(64, len(files) // (workers * 8)))
            for index, pixels in enumerate(pool.map(decode, files, chunksize=chunk)):
                array[index] = pixels
                progress.update()
    progress.close()
