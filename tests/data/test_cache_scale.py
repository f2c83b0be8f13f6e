"""The decode-once cache at NIH scale: a stopped build resumes, parallel builders share one build, and the
mapped pixels pickle by reference (spawned DataLoader workers and ddp_spawn must not copy 1.8 GB)."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from pneumo.data.cache import cache_key, decode_all, MappedPixels
from pneumo.data.datasets import CachedImages

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SIZE = 32
N_FILES = 300
BAD_EARLY, BAD_LATE = 2, 290      # an empty file, and a text file named .png
SLOW_ROWS = (40, 41, 42)          # 9000x9000 PNGs (~0.5 s each to decode): the build is killed while on them
CHECKPOINT = 16                   # a progress record every 16 rows: some are recorded before the slow rows
# Runs decode_all as a training job would, in its own process (and process group, so a kill takes the
# decode workers too); prints what the process maps and reads.
BUILDER = """
import hashlib, json, sys
import numpy as np
from pneumo.data.cache import decode_all
files, cache_dir, size = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
decoded = decode_all(files, size, 1, cache_dir=cache_dir, workers=2, checkpoint_every=%d)
mapped = [line.split()[4] for line in open("/proc/self/maps") if decoded.pixels.filename in line]
print(json.dumps({"inode": sorted(set(mapped)), "sha": hashlib.sha256(np.asarray(decoded.pixels)).hexdigest(),
                  "bad": {str(k): v for k, v in decoded.bad.items()}}))
""" % CHECKPOINT


def _write_files(folder: Path, count: int, side: int, seed: int) -> list[str]:
    """Distinct small grayscale PNGs (a ramp plus noise), so a row written to the wrong place shows."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(side), np.arange(side)) * (255 / (2 * side))
    files = []
    for index in range(count):
        pixels = (ramp * rng.uniform(0.3, 1.0) + rng.normal(0, 25, (side, side))).clip(0, 255).astype(np.uint8)
        files.append(str(folder / f"{index:05d}.png"))
        Image.fromarray(pixels).save(files[-1], compress_level=1)
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """300 files: two bad ones (an early and a late row) and three slow ones after the first records."""
    folder = tmp_path_factory.mktemp("scale")
    files = _write_files(folder, N_FILES, 96, seed=1)
    Path(files[BAD_EARLY]).write_bytes(b"")
    Path(files[BAD_LATE]).write_text("not an image")
    side = 9000  # under Pillow's decompression-bomb warning (89 Mpx); compresses to ~100 kB
    Image.fromarray(np.tile(np.arange(side, dtype=np.uint8), (side, 1))).save(files[SLOW_ROWS[0]], compress_level=9)
    for row in SLOW_ROWS[1:]:
        Path(files[row]).write_bytes(Path(files[SLOW_ROWS[0]]).read_bytes())
    return files


@pytest.fixture(scope="module")
def clean(files: list[str]):
    """The reference: the same files decoded in one uninterrupted, in-memory pass."""
    return decode_all(files, SIZE, 1, workers=2)


def _builder(files: list[str], cache_dir: Path, stderr: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUILDER, json.dumps(files), str(cache_dir), str(SIZE)],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=stderr.open("w"), text=True,
                            start_new_session=True)


def _done_rows(path: Path) -> np.ndarray | None:
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError):
        return None


def test_a_killed_build_resumes_decoding_only_the_rows_not_done(files, clean, tmp_path):
    # A copy of the files: this test overwrites some of them.
    shutil.copytree(Path(files[0]).parent, tmp_path / "images")
    files = [str(tmp_path / "images" / Path(file).name) for file in files]
    cache_dir = tmp_path / "cache"
    key = cache_key(files, SIZE, 1)
    done_path = cache_dir / f"{key}.done.npy"
    builder = _builder(files, cache_dir, tmp_path / "stderr.txt")
    deadline = time.monotonic() + 600
    while (done := _done_rows(done_path)) is None or not done.any():
        assert builder.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()[-2000:]
        time.sleep(0.01)
    os.killpg(builder.pid, signal.SIGKILL)  # the builder and its decode workers, mid-build
    builder.wait(timeout=30)

    done = np.load(done_path).astype(bool)
    n_done = int(done.sum())
    # Rows in order, recorded up to the slow files: the early bad file is done, the late one is not.
    assert 0 < n_done <= SLOW_ROWS[0] and done[:n_done].all() and not done[n_done:].any(), n_done
    assert (cache_dir / f"{key}.partial.npy").exists() and not (cache_dir / f"{key}.npy").exists()
    assert json.loads((cache_dir / f"{key}.partial.json").read_text())["bad"].keys() == {str(BAD_EARLY)}

    # The rows recorded as done now hold garbage of the same size and mtime (the key does not change):
    # decoding any of them again would make it a bad file. Only the rows not done may be decoded.
    for row in np.flatnonzero(done):
        stat = os.stat(files[row])
        Path(files[row]).write_bytes(bytes(stat.st_size))
        os.utime(files[row], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache_key(files, SIZE, 1) == key
    resumed = decode_all(files, SIZE, 1, cache_dir=cache_dir, workers=2, checkpoint_every=CHECKPOINT)

    assert np.array_equal(resumed.pixels, clean.pixels)
    # The early bad file comes from the progress record, the late one from the resumed decoding.
    assert resumed.bad == clean.bad and set(resumed.bad) == {BAD_EARLY, BAD_LATE}
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(f"{key}{s}" for s in (".npy", ".json", ".lock"))


def test_two_processes_building_one_cache_share_a_single_build(files, clean, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    key = cache_key(files, SIZE, 1)
    logs = [tmp_path / f"stderr{i}.txt" for i in range(2)]
    with open(cache_dir / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as if a third job were building: both must wait
        builders = [_builder(files, cache_dir, log) for log in logs]
        deadline = time.monotonic() + 600
        while not all("waiting for another process" in log.read_text() for log in logs):
            assert all(b.poll() is None for b in builders) and time.monotonic() < deadline, \
                [log.read_text()[-2000:] for log in logs]
            time.sleep(0.05)
        assert not (cache_dir / f"{key}.partial.npy").exists()  # nobody builds without the lock
    outputs = [b.communicate(timeout=120)[0] for b in builders]
    assert [b.returncode for b in builders] == [0, 0], [log.read_text()[-2000:] for log in logs]
    results = [json.loads(out.splitlines()[-1]) for out in outputs]

    expected_sha = hashlib.sha256(np.ascontiguousarray(clean.pixels)).hexdigest()
    final_inode = str(os.stat(cache_dir / f"{key}.npy").st_ino)
    for result in results:
        assert result["sha"] == expected_sha
        assert {int(k): v for k, v in result["bad"].items()} == clean.bad
        # Both map the one file that was built: a second build would have replaced it (a new inode).
        assert result["inode"] == [final_inode]
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(f"{key}{s}" for s in (".npy", ".json", ".lock"))


@pytest.fixture(scope="module")
def thousand(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("thousand")
    files = _write_files(folder / "images", 1000, 24, seed=2)
    return decode_all(files, 16, 1, cache_dir=folder / "cache", workers=2)


def test_cached_pixels_pickle_by_reference(thousand):
    pixels = thousand.pixels
    assert isinstance(pixels, MappedPixels) and pixels.nbytes == 1000 * 16 * 16
    payload = pickle.dumps(pixels)
    assert len(payload) < 10_000, len(payload)
    again = pickle.loads(payload)
    assert isinstance(again, MappedPixels) and not again.flags.writeable
    assert again.filename == pixels.filename and np.array_equal(again, pixels)
    assert len(pickle.dumps(again)) < 10_000  # and it stays a reference after a round trip

    # What is taken out of it is data, pickled by value: a batch must not turn into the whole cache.
    batch = pixels[[5, 1, 700]]
    assert type(batch) is np.ndarray and np.array_equal(pickle.loads(pickle.dumps(batch)), batch)
    row = pickle.loads(pickle.dumps(pixels[3]))
    assert row.shape == (1, 16, 16) and np.array_equal(row, pixels[3])


def test_a_spawned_dataloader_worker_reads_the_mapped_cache(thousand):
    labels = (np.arange(1000) % 2).astype(np.float32)
    dataset = CachedImages(thousand.pixels, labels)
    assert len(pickle.dumps(dataset)) < 20_000  # the labels (4 kB) and the path, not 256 kB of pixels
    loader = DataLoader(dataset, sampler=BatchSampler(SequentialSampler(range(1000)), 250, False), batch_size=None,
                        num_workers=1, multiprocessing_context="spawn")
    images, targets = zip(*loader)
    assert torch.equal(torch.cat(images), torch.from_numpy(np.array(thousand.pixels)))
    assert torch.equal(torch.cat(targets), torch.from_numpy(labels))
