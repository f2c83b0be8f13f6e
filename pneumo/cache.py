"""Decode-once cache: every image file is decoded a single time into a uint8 array of small images.

Decoding a 1-3 megapixel JPEG costs far more than the CNN's forward pass at 128x128, so training
epochs read this array instead of the files. The array lives in memory, or in a memory-mapped .npy
under a cache folder, keyed by the file list, sizes, mtimes and the decode settings, so that any
change to the files builds a new one. Files that cannot be decoded are recorded with the reason
(their rows stay zero) instead of stopping the build, so every bad file is reported at once.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from pneumo.images import DECODER_VERSION, BadImageError, decode_image


@dataclass
class DecodedImages:
    """uint8 pixels (N, C, H, W) in file order, and the rows whose file could not be decoded."""

    pixels: np.ndarray
    bad: dict[int, str] = field(default_factory=dict)

    @property
    def good_rows(self) -> list[int]:
        return [row for row in range(len(self.pixels)) if row not in self.bad]


def cache_key(files: Sequence[str | Path], size: int, channels: int, dicom_voi: str = "auto") -> str:
    """A digest of what the cache content depends on: paths, byte sizes, mtimes and decode settings."""
    digest = hashlib.sha256(json.dumps({"size": size, "channels": channels, "dicom_voi": dicom_voi,
                                        "decoder": DECODER_VERSION}).encode())
    for file in files:
        stat = os.stat(file)
        digest.update(f"{os.path.abspath(file)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def decode_all(files: Sequence[str | Path], size: int, channels: int, *, cache_dir: str | Path | None = None,
               workers: int | None = None, description: str = "decoding", dicom_voi: str = "auto") -> DecodedImages:
    """Every file decoded once.

    With `cache_dir`, the pixels are a read-only memory map of `<cache_dir>/<key>.npy` (the bad rows
    in `<key>.json` beside it), reused by every later run while the files are unchanged; without it,
    an in-memory array.
    """
    shape = (len(files), channels, size, size)
    if cache_dir is None:
        pixels = np.empty(shape, dtype=np.uint8)
        return DecodedImages(pixels, _fill(pixels, files, size, channels, dicom_voi, workers, description))

    key = cache_key(files, size, channels, dicom_voi)
    target, sidecar = Path(cache_dir) / f"{key}.npy", Path(cache_dir) / f"{key}.json"
    if target.exists() and sidecar.exists():
        cached = np.load(target, mmap_mode="r")
        if cached.shape == shape:
            bad = {int(row): reason for row, reason in json.loads(sidecar.read_text())["bad"].items()}
            return DecodedImages(cached, bad)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial_path = target.with_suffix(f".{os.getpid()}.partial")
    pixels = np.lib.format.open_memmap(partial_path, mode="w+", dtype=np.uint8, shape=shape)
    bad = _fill(pixels, files, size, channels, dicom_voi, workers, description)
    pixels.flush()
    del pixels
    sidecar.write_text(json.dumps({"bad": bad, "files": len(files)}))
    os.replace(partial_path, target)  # atomic: a reader never sees a half-written cache
    return DecodedImages(np.load(target, mmap_mode="r"), bad)


def _decode_or_reason(file: str | Path, size: int, channels: int, dicom_voi: str) -> np.ndarray | str:
    """Pixels, or the reason the file is bad: workers return reasons instead of raising."""
    try:
        return decode_image(file, size, channels, dicom_voi)
    except BadImageError as error:
        return error.reason


def _fill(array: np.ndarray, files: Sequence[str | Path], size: int, channels: int, dicom_voi: str,
          workers: int | None, description: str) -> dict[int, str]:
    """Decode into `array` in parallel processes, in file order, with a progress bar."""
    workers = workers or len(os.sched_getaffinity(0))
    decode = partial(_decode_or_reason, size=size, channels=channels, dicom_voi=dicom_voi)
    bad: dict[int, str] = {}
    progress = tqdm(total=len(files), desc=description, unit="img", leave=False, dynamic_ncols=True)

    def store(index: int, result: np.ndarray | str) -> None:
        if isinstance(result, str):
            bad[index] = result
            array[index] = 0
        else:
            array[index] = result
        progress.update()

    if workers == 1 or len(files) < 64:
        for index, file in enumerate(files):
            store(index, decode(file))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            chunk = max(1, min(64, len(files) // (workers * 8)))
            for index, result in enumerate(pool.map(decode, files, chunksize=chunk)):
                store(index, result)
    progress.close()
    return bad
