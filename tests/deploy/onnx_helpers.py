"""Shared by the export and bulk-prediction tests: `python -m pneumo.<module>` run as a user would, the demo
test images as pneumo decodes them, and one ONNX export of the shared trained run per session."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.config import PROJECT_ROOT
from pneumo.data.readers import read_image

_EXPORTS: dict[str, tuple[Any, Path, np.ndarray]] = {}


def run_module(module: str, *overrides: str) -> subprocess.CompletedProcess:
    """In a fresh interpreter, as conftest.run_entry_point runs train.py. No wall-time limit: the tests
    bound the work; pytest-timeout catches a hang."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, check=False)


def demo_test_images(tiny_root: Path, size: int, channels: int) -> np.ndarray:
    """The tiny demo set's test images as pneumo decodes them: uint8 (40, C, size, size)."""
    files = sorted((tiny_root / "test").rglob("*.jpeg"))
    assert len(files) == 40
    return np.stack([read_image(file, size, channels) for file in files])


def exported_once(trained_run: Any, tiny_root: Path, folder: Path) -> tuple[Any, Path, np.ndarray]:
    """(TrainedModel of a copy of the run's best checkpoint, its model.onnx, the demo test images), exported
    into `folder` on the first call of the session and reused after (an export takes seconds)."""
    from pneumo.deploy.export import export_onnx
    from pneumo.evaluation.trained import load_trained

    key = str(trained_run.best)
    if key not in _EXPORTS:
        ckpt = folder / trained_run.best.name
        shutil.copy(trained_run.best, ckpt)
        trained = load_trained(ckpt)
        images = demo_test_images(tiny_root, trained.image_size, trained.channels)
        _EXPORTS[key] = (trained, export_onnx(trained, folder / "out", check_images=images), images)
    return _EXPORTS[key]
