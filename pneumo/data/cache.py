"""Decode-once cache: every image file is decoded a single time into a uint8 array of small images.

Decoding a 1-3 megapixel JPEG costs far more than the CNN's forward pass at 128x128, so training
epochs read this array instead of the files. The array lives in memory, or in a memory-mapped .npy
under a cache folder, keyed by the file list, sizes, mtimes and the decode settings, so that any
change to the files builds a new one. Files that cannot be decoded are recorded with the reason
(their rows stay zero) instead of stopping the build, so every bad file is reported at once.

At NIH ChestX-ray14 scale (112,120 files, tens of minutes of decoding on a laptop) the build must survive
being stopped: it writes into `<key>.partial.npy` and records which rows are done in
`<key>.done.npy` (bad files so far in `<key>.partial.json`) every few hundred images, so a restarted
build decodes only the rows not yet done. One process builds a given cache at a time
(`<key>.lock`); the others wait and then reuse it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from pneumo.data.image_formats import BadImageError, DECODER_VERSION
from pneumo.data.readers import read_image

# Rows between progress records: an interrupted build loses at most this much work, and each
# record costs one flush of the memory map (an fsync).
CHECKPOINT_ROWS = 512
# Decode tasks submitted ahead per worker process: enough to keep every worker busy while the
# parent stores results, few enough that results waiting to be stored stay a few MB at any N.
TASKS_AHEAD_PER_WORKER = 4


class MappedPixels(np.memmap):
    """A finished cache file mapped read-only, that pickles as its path instead of its bytes.

    A plain `np.load(..., mmap_mode='r')` array pickles as a full in-memory copy, so every spawned
    DataLoader worker or `ddp_spawn` process would receive (and hold) the whole cache: 1.8 GB at NIH
    scale. This one re-opens the file by path on unpickling. Only the array as opened pickles that
    way; slices, index results and copies are ordinary arrays, pickled by value.
    """

    _cache_file: str | None = None

    def __array_finalize__(self, obj: Any) -> None:
        super().__array_finalize__(obj)
        self._cache_file = None  # set by open_cached_pixels on the whole-file array only

    def __getitem__(self, index: Any) -> Any:
        result = super().__getitem__(index)
        # A copy (fancy indexing) is not backed by the file: give it back as a plain array.
        if isinstance(result, MappedPixels) and result._mmap is None:
            return result.view(np.ndarray)
        return result

    def __reduce__(self) -> tuple:
        if self._cache_file is None:
            return np.array(self).__reduce__()
        return (open_cached_pixels, (self._cache_file, self.shape))

    def __reduce_ex__(self, protocol: int) -> tuple:
        return self.__reduce__()


def open_cached_pixels(path: str | Path, shape: tuple[int, ...] | None = None) -> MappedPixels:
    """The cache file at `path`, mapped read-only; `shape`, when given, is checked (a pickled array
    must find the file it was pickled from)."""
    path = os.path.abspath(path)  # `filename` and the pickled reference: one absolute str however it was given
    try:
        mapped = np.load(path, mmap_mode="r")
    except FileNotFoundError as error:
        raise FileNotFoundError(f"decoded-image cache {path} is gone (deleted while a process still used it): "
                                f"run again to rebuild it, and do not clear the cache folder during a run") from error
    if shape is not None and tuple(mapped.shape) != tuple(shape):
        raise ValueError(f"decoded-image cache {path} holds {mapped.shape}, expected {tuple(shape)}: the file was "
                         f"replaced during the run; delete it and run again")
    pixels = mapped.view(MappedPixels)
    pixels._cache_file = path
    return pixels


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


@dataclass(frozen=True)
class CacheFiles:
    """The files of one cache key in the cache folder."""

    folder: Path
    key: str

    def _named(self, suffix: str) -> Path:
        return self.folder / f"{self.key}{suffix}"

    @property
    def pixels(self) -> Path:  # the finished cache
        return self._named(".npy")

    @property
    def sidecar(self) -> Path:  # its bad rows
        return self._named(".json")

    @property
    def lock(self) -> Path:
        return self._named(".lock")

    @property
    def partial(self) -> Path:  # the build in progress
        return self._named(".partial.npy")

    @property
    def done(self) -> Path:  # which rows of the partial build hold their pixels
        return self._named(".done.npy")

    @property
    def partial_bad(self) -> Path:  # bad rows of the partial build so far
        return self._named(".partial.json")


def decode_all(files: Sequence[str | Path], size: int, channels: int, *, cache_dir: str | Path | None = None,
               workers: int | None = None, description: str = "decoding", dicom_voi: str = "auto",
               checkpoint_every: int = CHECKPOINT_ROWS) -> DecodedImages:
    """Every file decoded once.

    With `cache_dir`, the pixels are a read-only memory map (`MappedPixels`) of `<cache_dir>/<key>.npy`
    (the bad rows in `<key>.json` beside it), reused by every later run while the files are unchanged;
    an interrupted build resumes from its last progress record (every `checkpoint_every` rows).
    Without it, an in-memory array.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every={checkpoint_every} must be >= 1")
    shape = (len(files), channels, size, size)
    if cache_dir is None:
        pixels = np.empty(shape, dtype=np.uint8)
        bad: dict[int, str] = {}
        _fill(pixels, files, np.arange(len(files)), bad, size=size, channels=channels, dicom_voi=dicom_voi,
              workers=workers, description=description)
        return DecodedImages(pixels, bad)

    paths = CacheFiles(Path(cache_dir), cache_key(files, size, channels, dicom_voi))
    finished = _load_finished(paths, shape)
    if finished is not None:
        return finished
    paths.folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(paths.lock, description):
        finished = _load_finished(paths, shape)  # built by another process while this one waited
        if finished is None:
            _build(paths, files, shape, size=size, channels=channels, dicom_voi=dicom_voi, workers=workers,
                   description=description, checkpoint_every=checkpoint_every)
            finished = _load_finished(paths, shape)
    if finished is None:
        raise RuntimeError(f"the cache {paths.pixels} was built but cannot be read back: delete it and run again")
    return finished


def _load_finished(paths: CacheFiles, shape: tuple[int, ...]) -> DecodedImages | None:
    """The finished cache of this key, or None. The sidecar is written before the atomic rename of the
    pixels, so a cache that exists is complete."""
    try:
        pixels = open_cached_pixels(paths.pixels)
        recorded = json.loads(paths.sidecar.read_text())["bad"]
    except (OSError, ValueError, KeyError):
        return None
    if pixels.shape != shape:
        return None
    return DecodedImages(pixels, {int(row): reason for row, reason in recorded.items()})


@contextmanager
def _exclusive(lock_path: Path, description: str) -> Iterator[None]:
    """Hold `<key>.lock` while building: parallel jobs (a Hydra sweep) on one cache folder would
    otherwise write the same partial file at once. The kernel drops the lock if the holder dies."""
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            tqdm.write(f"{description}: waiting for another process that is building {lock_path.with_suffix('.npy')}",
                       file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _build(paths: CacheFiles, files: Sequence[str | Path], shape: tuple[int, ...], *, checkpoint_every: int,
           **decode: Any) -> None:
    """Decode the rows not yet done into the partial file, recording progress as it goes; when all
    are done, publish it as the finished cache and remove the progress files."""
    pixels, done, bad = _open_partial(paths, shape)
    todo = np.flatnonzero(~done)
    if len(todo) < len(done):
        tqdm.write(f"{decode['description']}: resuming an interrupted build, {len(done) - len(todo)} of "
                   f"{len(done)} images already decoded", file=sys.stderr)

    def record(rows: list[int]) -> None:
        pixels.flush()  # the pixels reach the disk before the record that says they are there
        _replace_atomically(paths.partial_bad, lambda out: out.write(json.dumps({"bad": bad}).encode()))
        done[rows] = True
        _replace_atomically(paths.done, lambda out: np.save(out, done))

    _fill(pixels, files, todo, bad, record=record, checkpoint_every=checkpoint_every, **decode)
    pixels.flush()
    del pixels
    _replace_atomically(paths.sidecar, lambda out: out.write(json.dumps({"bad": bad, "files": len(files)}).encode()))
    os.replace(paths.partial, paths.pixels)  # atomic: a reader never sees a half-written cache
    for progress in (paths.done, paths.partial_bad):
        progress.unlink(missing_ok=True)


def _open_partial(paths: CacheFiles, shape: tuple[int, ...]) -> tuple[np.memmap, np.ndarray, dict[int, str]]:
    """The interrupted build of this key with its done rows and bad rows so far, or a fresh one.

    The progress record is trusted only together with the partial file it describes; anything
    missing, damaged or of the wrong shape starts the build over.
    """
    try:
        pixels = np.lib.format.open_memmap(paths.partial, mode="r+")
        done = np.load(paths.done).astype(bool)
        recorded = json.loads(paths.partial_bad.read_text())["bad"]
        if pixels.shape == shape and pixels.dtype == np.uint8 and done.shape == shape[:1]:
            return pixels, done, {int(row): reason for row, reason in recorded.items() if done[int(row)]}
        del pixels
    except (OSError, ValueError, KeyError, EOFError):
        pass  # no interrupted build, or one too damaged to trust
    # The old record goes first: it must never be read against the fresh (zero) pixels.
    for progress in (paths.done, paths.partial_bad):
        progress.unlink(missing_ok=True)
    pixels = np.lib.format.open_memmap(paths.partial, mode="w+", dtype=np.uint8, shape=shape)
    return pixels, np.zeros(shape[0], dtype=bool), {}


def _replace_atomically(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write beside `path`, fsync, rename over it: a restarted build reads the old record or the new
    one, never a torn one. Only the lock holder writes, so the temporary name can be fixed."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as out:
        write(out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def _decode_or_reason(file: str | Path, size: int, channels: int, dicom_voi: str) -> np.ndarray | str:
    """Pixels, or the reason the file is bad: workers return reasons instead of raising."""
    try:
        return read_image(file, size, channels, dicom_voi)
    except BadImageError as error:
        return error.reason


def _decode_chunk(files: list[str], size: int, channels: int, dicom_voi: str) -> list[np.ndarray | str]:
    """One worker task: several files, so the per-task cost of the process pool is shared."""
    return [_decode_or_reason(file, size, channels, dicom_voi) for file in files]


def _in_order(submit: Callable[[Any], Future], tasks: Iterable[Any], ahead: int) -> Iterator[tuple[Any, Any]]:
    """(task, result) in task order, with at most `ahead` tasks submitted and not yet consumed.

    `Executor.map` submits every task at once and keeps each result until the consumer reaches it;
    at 112,120 files that queues every path up front and lets decoded images pile up.
    """
    pending: deque[tuple[Any, Future]] = deque()
    for task in tasks:
        pending.append((task, submit(task)))
        if len(pending) >= ahead:
            task, future = pending.popleft()
            yield task, future.result()
    while pending:
        task, future = pending.popleft()
        yield task, future.result()


def _fill(array: np.ndarray, files: Sequence[str | Path], rows: np.ndarray, bad: dict[int, str], *, size: int,
          channels: int, dicom_voi: str, workers: int | None, description: str,
          record: Callable[[list[int]], None] | None = None, checkpoint_every: int = CHECKPOINT_ROWS) -> None:
    """Decode `files[rows]` into `array[rows]` in parallel processes, in row order, with a progress bar.

    Each result is written into `array` (the memory map, for a disk cache) as it arrives, so memory
    does not grow with the number of files. Bad files go into `bad` with their row zeroed.
    `record(rows)` is called with the rows stored since its last call, every `checkpoint_every`
    rows and at the end.
    """
    workers = workers or len(os.sched_getaffinity(0))
    decode = partial(_decode_chunk, size=size, channels=channels, dicom_voi=dicom_voi)
    progress = tqdm(total=len(array), initial=len(array) - len(rows), desc=description, unit="img", leave=False,
                    dynamic_ncols=True)
    stored: list[int] = []

    def store(row: int, result: np.ndarray | str) -> None:
        if isinstance(result, str):
            bad[row] = result
            array[row] = 0
        else:
            bad.pop(row, None)
            array[row] = result
        stored.append(row)
        if record is not None and len(stored) >= checkpoint_every:
            record(stored)
            stored.clear()

    rows = [int(row) for row in rows]
    if workers == 1 or len(rows) < 64:
        for row in rows:
            store(row, decode([str(files[row])])[0])
            progress.update()
    else:
        chunk = max(1, min(64, len(rows) // (workers * 8)))
        chunks = (rows[start:start + chunk] for start in range(0, len(rows), chunk))
        pool = ProcessPoolExecutor(max_workers=workers)
        try:
            def submit(chunk_rows: list[int]) -> Future:
                return pool.submit(decode, [str(files[row]) for row in chunk_rows])

            for chunk_rows, results in _in_order(submit, chunks, workers * TASKS_AHEAD_PER_WORKER):
                for row, result in zip(chunk_rows, results):
                    store(row, result)
                progress.update(len(chunk_rows))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # after an error or Ctrl-C: drop the queued tasks
    if record is not None and stored:
        record(stored)
    progress.close()
