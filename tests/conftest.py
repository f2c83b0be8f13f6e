"""Shared fixtures: a small synthetic data set on disk and a private MLflow store per test."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pneumo.config import PROJECT_ROOT
from pneumo.demo.synthetic import ensure_synthetic_dataset

# Small enough to write in seconds, large enough for a patient-grouped split with both classes.
TINY_SET = dict(seed=3, n_train=80, n_val=16, n_test=40, min_side=512, max_side=640)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("data") / "chest_xray", **TINY_SET)


def run_entry_point(script: str, *overrides: str, cwd: Path | None = None,
                    timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run train.py / evaluate.py exactly as a user would, in a fresh interpreter.

    No wall-time limit by default: tests bound the work (tiny data, few epochs) and pytest-timeout
    (pytest.ini) catches a hang, so a loaded machine slows a test down without failing it."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / script), *overrides], cwd=cwd or PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def isolated_overrides(tmp: Path) -> list[str]:
    """Overrides that keep a test's store, caches and outputs out of the project folder."""
    return [f"logger.tracking_uri=sqlite:///{tmp}/mlruns/mlflow.db",
            f"logger.artifact_location=file://{tmp}/mlruns/artifacts",
            f"cache_dir={tmp}/cache", f"hydra.run.dir={tmp}/run"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on loopback with a sqlite backend and its own artifact folder."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> "MlflowServer":
        import time
        import urllib.request

        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
             "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=open(self.folder / "server.log", "w"), start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.process.poll() is None, (self.folder / "server.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"mlflow server did not answer on {self.uri}")

    def stop(self) -> None:
        import signal

        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its workers
            self.process.wait()


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def environment_restored():
    """Each test's changes to os.environ end with it: an in-process search publishes variables (its
    context, the sweep keys) that would otherwise reach the subprocesses of every later test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# The demo set at test scale, as the entry-point tests write it on the command line.
TINY_DATA = ["data=synthetic", "data.synthetic.n_train=80", "data.synthetic.n_test=40",
             "data.synthetic.min_side=512", "data.synthetic.max_side=640", "data.image_size=64"]


class TrainedRun:
    """A finished `train.py` run in its own folder: `folder`, its MLflow store (`tracking_uri`),
    `run_id`, the run folder (`run_dir`) and the best checkpoint (`best`, the full local one)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tracking_uri = f"sqlite:///{folder}/mlruns/mlflow.db"
        self.run_dir = folder / "run"
        [self.best] = sorted((self.run_dir / "checkpoints").glob("best*.ckpt"))
        from mlflow.tracking import MlflowClient

        experiment = MlflowClient(self.tracking_uri).get_experiment_by_name("pneumo")
        [run] = MlflowClient(self.tracking_uri).search_runs([experiment.experiment_id])
        self.run_id = run.info.run_id


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One 2-epoch baseline run on the tiny demo set, shared by every test that only reads it (deploy,
    app): copy `best` before changing anything."""
    folder = tmp_path_factory.mktemp("trained_run")
    result = run_entry_point("train.py", *TINY_DATA, "trainer.max_epochs=2", *isolated_overrides(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    return TrainedRun(folder)


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_the_project():
    """No test may write MLflow files into the project: MLflow falls back to ./mlflow.db and ./mlruns/<id>/
    when a store or an experiment's artifact location is not passed on. Checked once, after the session."""
    root_store = PROJECT_ROOT / "mlflow.db"
    before = root_store.exists(), {p.name for p in (PROJECT_ROOT / "mlruns").iterdir()}
    yield
    after = root_store.exists(), {p.name for p in (PROJECT_ROOT / "mlruns").iterdir()}
    assert after[0] <= before[0], f"a test wrote {root_store}"
    assert after[1] <= before[1], f"a test wrote into {PROJECT_ROOT / 'mlruns'}: {sorted(after[1] - before[1])}"
