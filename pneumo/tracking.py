"""MLflow glue: where runs go, what each run records, and the link that opens them in the UI."""
from __future__ import annotations

import fcntl
import json
import subprocess
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pneumo.config import PROJECT_ROOT, flatten

MLFLOW_PARAM_LIMIT = 6000  # characters MLflow keeps of one parameter value


def mlflow_logger(tracking_uri: str, experiment_name: str, run_name: str | None = None,
                  artifact_location: str | None = None, tags: dict[str, str] | None = None,
                  run_id: str | None = None) -> MLFlowLogger:
    """An MLFlowLogger on a database store or a server; never the deprecated ./mlruns file store.

    `artifact_location` is used for local stores only: a tracking server decides where artifacts go.
    `run_id` continues an existing run (resume) instead of starting one.
    """
    if not tracking_uri.startswith("sqlite:///"):
        artifact_location = None
    prepare_store(tracking_uri, experiment_name, artifact_location)
    return MLFlowLogger(experiment_name=experiment_name, run_name=run_name, tracking_uri=tracking_uri,
                        artifact_location=artifact_location, tags={**git_tags(), **(tags or {})}, run_id=run_id)


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
    logger.experiment.log_text(logger.run_id, OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:MLFLOW_PARAM_LIMIT]


def log_json(logger: MLFlowLogger, payload: Any, artifact_file: str) -> None:
    logger.experiment.log_dict(logger.run_id, payload, artifact_file)


def log_file(logger: MLFlowLogger, path: str | Path, artifact_dir: str | None = None) -> None:
    if Path(path).exists():
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_dir)


def end_run(logger: MLFlowLogger, status: str) -> None:
    """Close the run as FINISHED, FAILED or KILLED, so no run is left RUNNING after a crash."""
    logger.experiment.set_terminated(logger.run_id, status)


def ui_link(tracking_uri: str, experiment_id: str, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The runs table in the classic view; without workflowType the UI opens an empty GenAI page."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else f"http://{host}:{port}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """What to type to see the runs: the server command for a local store, then the link."""
    lines = []
    if not tracking_uri.startswith("http"):
        lines.append(f"  mlflow ui --backend-store-uri {tracking_uri}")
    lines.append(f"  {ui_link(tracking_uri, experiment_id)}")
    return "\n".join(lines)
