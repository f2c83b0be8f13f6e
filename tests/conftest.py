"""Shared fixtures: a small synthetic data set on disk and a private MLflow store per test."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pneumo.config import PROJECT_ROOT
from pneumo.synthetic import ensure_synthetic_dataset

# Small enough to write in seconds, large enough for a patient-grouped split with both classes.
TINY_SET = dict(seed=3, n_train=80, n_val=16, n_test=40, min_side=512, max_side=640)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("data") / "chest_xray", **TINY_SET)


def run_entry_point(script: str, *overrides: str, cwd: Path | None = None,
                    timeout: int = 600) -> subprocess.CompletedProcess:
    """Run train.py / evaluate.py exactly as a user would, in a fresh interpreter."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / script), *overrides], cwd=cwd or PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def isolated_overrides(tmp: Path) -> list[str]:
    """Overrides that keep a test's store, caches and outputs out of the project folder."""
    return [f"logger.tracking_uri=sqlite:///{tmp}/mlruns/mlflow.db",
            f"logger.artifact_location=file://{tmp}/mlruns/artifacts",
            f"cache_dir={tmp}/cache", f"hydra.run.dir={tmp}/run"]
