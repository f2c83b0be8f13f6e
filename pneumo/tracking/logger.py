"""MLflow glue: where runs go, what each run records, and the link that opens them in the UI."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import urllib.request
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from lightning.pytorch.loggers import MLFlowLogger
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pneumo.config import PROJECT_ROOT, flatten

log = logging.getLogger(__name__)

MLFLOW_PARAM_LIMIT = 6000  # characters MLflow keeps of one parameter value


class TrackingLogger(MLFlowLogger):
    """MLFlowLogger that outlives its tracking server.

    If the server stops answering mid-run, training goes on: the first failure is reported, every later
    metric, parameter and artifact is kept in `lost_path` (JSON lines) instead of being sent, and the end
    of the run says how much was not logged. Checkpoints are on local disk either way.
    """

    def __init__(self, *args: Any, lost_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tracking_uri = kwargs["tracking_uri"]
        self.lost_path = Path(lost_path) if lost_path else None
        self.lost: list[dict[str, Any]] = []
        self.failed_at: str | None = None

    def guard(self, what: str, call: Callable[..., Any], *args: Any, record: Any = None, **kwargs: Any) -> Any:
        """Run one MLflow call; after the first failure, keep the payload locally instead."""
        if self.failed_at is None:
            try:
                return call(*args, **kwargs)
            except Exception as error:  # connection refused, timeouts, HTTP 5xx after MLflow's retries
                self.failed_at = what
                warnings.warn(f"MLflow at {self.tracking_uri} stopped answering ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]}) while logging {what}. Training goes on; "
                              f"what is not logged is kept in {self.lost_path}.", RuntimeWarning, stacklevel=2)
        entry = {"what": what, "payload": record}
        self.lost.append(entry)
        if self.lost_path is not None:  # one line per lost call, appended as it happens
            self.lost_path.parent.mkdir(parents=True, exist_ok=True)
            with self.lost_path.open("a") as handle:
                handle.write(json.dumps(entry, default=str) + "\n")
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        plain = {key: float(value) for key, value in metrics.items()}
        self.guard(f"metrics at step {step}", super().log_metrics, metrics, step,
                   record={"step": step, "metrics": plain})

    def log_hyperparams(self, params: Any) -> None:
        self.guard("params", super().log_hyperparams, params, record=dict(params))

    def finalize(self, status: str = "success") -> None:
        self.guard(f"the run status ({status})", super().finalize, status, record=status)
        if self.lost:
            log.warning("MLflow did not receive %d logging call(s) after it failed at %s; they are in %s",
                        len(self.lost), self.failed_at, self.lost_path)


def mlflow_logger(tracking_uri: str, experiment_name: str, run_name: str | None = None,
                  artifact_location: str | None = None, tags: dict[str, str] | None = None,
                  run_id: str | None = None, on_unreachable: str = "error",
                  local_tracking_uri: str | None = None, lost_path: str | None = None) -> TrackingLogger:
    """An MLflow logger on a database store or a server; never the deprecated ./mlruns file store.

    `artifact_location` is used for local stores only: a tracking server decides where artifacts go.
    `run_id` continues an existing run (resume) instead of starting one. A server that does not answer
    at start is an error (`on_unreachable=error`), or the run goes to `local_tracking_uri` (`local`).
    """
    if on_unreachable not in ("error", "local"):
        raise ValueError(f"logger.on_unreachable={on_unreachable!r}: choose 'error' or 'local'")
    if tracking_uri.startswith("http"):
        _limit_http_retries()
        problem = server_problem(tracking_uri)
        if problem and (on_unreachable == "error" or not local_tracking_uri):
            raise ConnectionError(
                f"MLflow tracking server {tracking_uri} is unreachable ({problem}). Start it, fix "
                f"logger.tracking_uri, or pass logger.on_unreachable=local to record this run in the local "
                f"store{f' ({local_tracking_uri})' if local_tracking_uri else ''} instead.")
        if problem:
            log.warning("MLflow tracking server %s is unreachable (%s): this run goes to the local store %s",
                        tracking_uri, problem, local_tracking_uri)
            tracking_uri = local_tracking_uri
    if not tracking_uri.startswith("sqlite:///"):
        artifact_location = None
    prepare_store(tracking_uri, experiment_name, artifact_location)
    return TrackingLogger(experiment_name=experiment_name, run_name=run_name, tracking_uri=tracking_uri,
                          artifact_location=artifact_location, tags={**git_tags(), **(tags or {})}, run_id=run_id,
                          lost_path=lost_path)


def server_problem(tracking_uri: str, timeout: float = 5.0) -> str | None:
    """None if the server's /health answers, else what went wrong."""
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except (OSError, ValueError) as error:
        return str(getattr(error, "reason", error))


def _limit_http_retries() -> None:
    """MLflow retries a failed request 7 times with growing waits (minutes in all); a training run
    should notice a dead server in seconds. Values set by the user win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def prepare_store(tracking_uri: str, experiment_name: str, artifact_location: str | None = None) -> None:
    """Create the sqlite store and the experiment once, under a file lock.

    Several processes opening a new sqlite store at once (a joblib sweep) race on its schema
    migrations ("Online migration expected to match one row"); the lock makes the first one create
    it and the others find it ready.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    if artifact_location and artifact_location.startswith("file:"):
        Path(artifact_location.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    with open(database.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(tracking_uri=tracking_uri)
        if client.get_experiment_by_name(experiment_name) is None:
            client.create_experiment(experiment_name, artifact_location=artifact_location)


def git_tags() -> dict[str, str]:
    """The commit the code ran from, and whether the work tree had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()} if commit else {}


def log_config(logger: MLFlowLogger, cfg: DictConfig) -> None:
    """Flattened params (dotted like Hydra overrides) plus the resolved YAML as an artifact."""
    params = {key: _param_value(value) for key, value in flatten(cfg).items()}
    logger.log_hyperparams(params)
    log_text(logger, OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:MLFLOW_PARAM_LIMIT]


def _call(logger: MLFlowLogger, what: str, method: str, *args: Any, record: Any = None) -> Any:
    """One MlflowClient call for this run, through the logger's guard when it has one."""
    call = getattr(logger.experiment, method)
    if isinstance(logger, TrackingLogger):
        return logger.guard(what, call, logger.run_id, *args, record=record)
    return call(logger.run_id, *args)


def log_text(logger: MLFlowLogger, text: str, artifact_file: str) -> None:
    _call(logger, artifact_file, "log_text", text, artifact_file, record=artifact_file)


def log_json(logger: MLFlowLogger, payload: Any, artifact_file: str) -> None:
    _call(logger, artifact_file, "log_dict", payload, artifact_file, record=payload)


def log_file(logger: MLFlowLogger, path: str | Path, artifact_dir: str | None = None) -> None:
    if Path(path).exists():
        _call(logger, str(path), "log_artifact", str(path), artifact_dir, record=str(path))


def set_tag(logger: MLFlowLogger, key: str, value: str) -> None:
    _call(logger, f"tag {key}", "set_tag", key, value, record={key: value})


def end_run(logger: MLFlowLogger, status: str) -> None:
    """Close the run as FINISHED, FAILED or KILLED, so no run is left RUNNING after a crash."""
    _call(logger, f"the run status ({status})", "set_terminated", status, record=status)


def reopen_run(logger: MLFlowLogger) -> None:
    """A resumed run is RUNNING again until it ends."""
    _call(logger, "the run status (RUNNING)", "update_run", "RUNNING", record="RUNNING")


def ui_link(tracking_uri: str, experiment_id: str, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The runs table in the classic view; without workflowType the UI opens an empty GenAI page."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else f"http://{host}:{port}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def mlflow_command() -> str:
    """The `mlflow` program of this Python environment, as a path that works from a fresh shell (no
    activated venv needed): relative to the current folder when it is under it, else absolute."""
    program = Path(sys.executable).parent / "mlflow"
    if not program.exists():
        return f"{sys.executable} -m mlflow"
    try:
        return str(program.relative_to(Path.cwd()))
    except ValueError:
        return str(program)


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """What to type to see the runs: the server command for a local store, then the link."""
    lines = []
    if not tracking_uri.startswith("http"):
        lines.append(f"  {mlflow_command()} ui --backend-store-uri {tracking_uri}")
    lines.append(f"  {ui_link(tracking_uri, experiment_id)}")
    return "\n".join(lines)
