"""ckpt=best|last and resume=last find the newest run's checkpoint; a weights-only copy evaluates but cannot resume."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pneumo.models.checkpoints import (newest_checkpoint, resolve_checkpoint_path, weights_only_checkpoint)


def _touch(path, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_best_and_last_pick_the_newest_run(tmp_path):
    old_best = _touch(tmp_path / "outputs/2026-11-01/10-00-00/checkpoints/best-epoch02.ckpt", 1000)
    _touch(tmp_path / "outputs/2026-11-01/10-00-00/checkpoints/last.ckpt", 1001)
    new_best = _touch(tmp_path / "multirun/2026-11-02/09-00-00/3/checkpoints/best-epoch00.ckpt", 2000)
    new_last = _touch(tmp_path / "multirun/2026-11-02/09-00-00/3/checkpoints/last.ckpt", 2001)
    interrupted = _touch(tmp_path / "outputs/2026-11-03/08-00-00/checkpoints/interrupted.ckpt", 3000)
    assert resolve_checkpoint_path("best", tmp_path) == new_best != old_best
    assert resolve_checkpoint_path("last", tmp_path) == new_last
    assert newest_checkpoint(tmp_path) == interrupted  # resume=last also continues an interrupted run
    assert resolve_checkpoint_path("~/x.ckpt", tmp_path) == Path("~/x.ckpt").expanduser()


def test_best_is_the_best_of_the_run_started_last_not_the_newest_file(tmp_path):
    # A long run started first improves late: its best-epoch file is the newest file, but the run the user
    # just started (its .hydra/ written later) is the one `best` means.
    long_run, new_run = tmp_path / "outputs/2026-11-01/08-00-00", tmp_path / "outputs/2026-11-01/09-00-00"
    _touch(long_run / ".hydra/config.yaml", 100)
    _touch(new_run / ".hydra/config.yaml", 200)
    late_best = _touch(long_run / "checkpoints/best-epoch40.ckpt", 900)
    new_best = _touch(new_run / "checkpoints/best-epoch01.ckpt", 300)
    _touch(new_run / "checkpoints/last.ckpt", 310)
    assert resolve_checkpoint_path("best", tmp_path) == new_best != late_best
    assert resolve_checkpoint_path("last", tmp_path).parent == new_best.parent  # the same run


def test_no_checkpoint_names_the_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="outputs.*multirun"):
        resolve_checkpoint_path("best", tmp_path)


def test_weights_only_copy_keeps_what_evaluation_needs():
    full = {"state_dict": {"w": torch.zeros(2)}, "pneumo": {"threshold": {"value": 0.4}}, "epoch": 2,
            "global_step": 30, "optimizer_states": [{"state": {}}], "loops": {"fit_loop": {}},
            "callbacks": {}, "lr_schedulers": []}
    slim = weights_only_checkpoint(full)
    assert set(slim) == {"state_dict", "pneumo", "epoch", "global_step"}
    assert slim["state_dict"] is full["state_dict"]
