"""The exported ONNX model in the training run it came from: `mlflow.onnx` logs model.onnx (the sidecar
as an extra file and its fields as metadata) into the checkpoint's run (checkpoint["pneumo"]["mlflow"]).

An unreachable store or an unknown run is reported, never raised: the files on disk are the export's
result, MLflow is the record of it.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pneumo.deploy.registry import default_store
from pneumo.tracking.logger import server_problem

ONNX_MODEL_NAME = "onnx_model"
ONNX_URI_TAG = "pneumo.onnx_model_uri"
ONNX_PACKAGES = ("onnx", "onnxruntime", "numpy")


@dataclass
class TrainingRun:
    """A training run that answered: its client, id, URI and status when found."""

    client: Any
    run_id: str
    tracking_uri: str
    status: str


def find_training_run(run_id: str | None, tracking_uri: str | None) -> TrainingRun | str:
    """The training run, or the reason it cannot be reached (no run id, no store file, no server, no run).

    A `sqlite:` store whose file does not exist is reported as such instead of being created empty.
    """
    if not run_id:
        return "the checkpoint names no MLflow training run (trained with logger=none, or imported)"
    if not tracking_uri:
        return f"no tracking URI for run {run_id}: pass tracking_uri=URI"
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri[len("sqlite:///"):])
        if not database.is_file():
            return f"the store {database} does not exist (moved? pass tracking_uri=sqlite:///PATH/mlflow.db)"
    elif tracking_uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a dead server: seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        problem = server_problem(tracking_uri)
        if problem:
            return f"the tracking server {tracking_uri} does not answer ({problem})"
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri)
        run = client.get_run(run_id)
    except Exception as error:  # MlflowException (no such run), database or connection errors
        return f"run {run_id} is not in {tracking_uri}: {str(error).splitlines()[0]}"
    return TrainingRun(client, run_id, tracking_uri, run.info.status)


def training_split_counts(run: TrainingRun) -> dict[str, Any] | None:
    """The split counts the run logged (data/summary.json), or None when it has none."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file: no bar
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = run.client.download_artifacts(run.run_id, "data/summary.json", folder)
            return json.loads(Path(path).read_text()).get("counts")
    except Exception:  # an older run without the file, or an artifact store that is not reachable
        return None


@contextmanager
def _experiment(experiment_id: str) -> Iterator[None]:
    """MLflow's active experiment is `experiment_id` inside the block (through its MLFLOW_EXPERIMENT_ID
    variable, which `mlflow.log_model` reads when no run is active), and what it was after."""
    before = os.environ.get("MLFLOW_EXPERIMENT_ID")
    os.environ["MLFLOW_EXPERIMENT_ID"] = str(experiment_id)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = before


def log_onnx_model(model_path: Path, run: TrainingRun) -> str:
    """Log model.onnx with its sidecar into the training run; returns the model URI.

    The run is written to by id, never reopened or closed: its status stays what it was (a RUNNING run,
    e.g. exporting ckpt=last while training goes on, stays RUNNING; FINISHED stays FINISHED), and the tag
    `pneumo.onnx_model_uri` points to the logged model. The process's MLflow tracking URI is set only for
    the call and restored after it (`pneumo.deploy.registry.default_store`).

    Raises:
        whatever MLflow raises while logging (the caller reports it).
    """
    import mlflow.onnx
    import numpy as np
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    sidecar = Path(model_path).with_suffix(".json")
    metadata = json.loads(sidecar.read_text())
    channels, size = int(metadata["channels"]), int(metadata["image_size"])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, channels, size, size), metadata["input"]["name"])]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,), metadata["output"]["name"])]))
    flat = {key: metadata[key] for key in ("threshold", "threshold_policy", "temperature", "image_size", "channels",
                                           "class_names", "train_run_id")}
    experiment_id = run.client.get_run(run.run_id).info.experiment_id
    # The model's artifacts go to the run's store and experiment (MLflow files a logged model under the active
    # experiment, the store's Default one unless told), and the caller's URI and experiment come back.
    with default_store(run.tracking_uri), _experiment(experiment_id):
        info = mlflow.onnx.log_model(onnx.load(str(model_path)), name=ONNX_MODEL_NAME, signature=signature,
                                     pip_requirements=[f"{name}=={version(name)}" for name in ONNX_PACKAGES],
                                     metadata={"pneumo": flat}, extra_files=[str(sidecar)],
                                     save_as_external_data=False, run_id=run.run_id)
    run.client.set_tag(run.run_id, ONNX_URI_TAG, info.model_uri)
    return info.model_uri
