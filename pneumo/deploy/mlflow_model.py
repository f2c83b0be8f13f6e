"""The trained model in MLflow's format: a pyfunc model whose one artifact is the weights-only checkpoint.

`mlflow models serve -m runs:/RUN_ID/model --env-manager local` (or `models:/pneumo@champion`) answers
uint8 images (N, C, H, W) with P(pneumonia) (N,), float64, the number evaluate.py writes to
predictions.csv: the checkpoint is rebuilt by `pneumo.evaluation.trained.load_trained`, so the weights,
the preprocessing and the temperature (sigmoid(logit / T)) are evaluate.py's.

Why pyfunc and not the pytorch flavour: the pytorch flavour pickles the module, a second copy of the
weights beside the checkpoint the run already logs (17 MB each for the seed CNN). Here the checkpoint
*is* the model's artifact (`model/artifacts/<best-epochNN.ckpt>`), so training does not log it again
under `checkpoints/` (pneumo.training.run), and `pneumo.tracking.registry.resolve_model_checkpoint`
finds it again for evaluate.py, the review page and the promotion.
"""
from __future__ import annotations

import logging
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from pneumo.config import PROJECT_ROOT
from pneumo.deploy.registry import default_store
from pneumo.evaluation.trained import load_trained
from pneumo.models.checkpoints import weights_only_checkpoint
from pneumo.tracking.registry import CHECKPOINT_ARTIFACT, MODEL_ARTIFACT_PATH

log = logging.getLogger(__name__)

# Pinned from this environment: MLflow's own requirement inference would load the model once more.
SERVED_PACKAGES = ("torch", "torchvision", "lightning", "torchmetrics", "numpy", "pillow", "omegaconf",
                   "hydra-core")


class PneumoniaModel(mlflow.pyfunc.PythonModel):
    """uint8 images (N, C, H, W), as `pneumo.data.readers.read_image` decodes them at the model's size, in;
    P(pneumonia) (N,) float64 out, exactly `load_trained(checkpoint).probabilities(images)`.

    The checkpoint comes from the model's artifacts (`context.artifacts["checkpoint"]`), read when MLflow
    loads the model, never pickled with it.
    """

    def load_context(self, context: Any) -> None:
        """Called by MLflow once when it loads the model: rebuild the checkpoint it ships
        (`context.artifacts["checkpoint"]`, a local path) as `load_trained` does for evaluate.py."""
        self.trained = load_trained(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """``model_input``: a uint8 array (N, C, H, W) (lists of lists are converted). Returns np.ndarray
        float64 (N,). Raises ValueError naming the expected shape when the images are not (N, C, H, W) at
        the model's channels and size."""
        images = np.asarray(model_input)
        expected = (self.trained.channels, self.trained.image_size, self.trained.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"the model takes uint8 images of shape (N, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}) as pneumo.data.readers.read_image(path, {expected[1]}, "
                             f"{expected[0]}) decodes them; got shape {images.shape}")
        return self.trained.probabilities(images.astype(np.uint8, copy=False))


def signature(image_size: int, channels: int) -> ModelSignature:
    """The served model's signature: uint8 (-1, channels, image_size, image_size) in, float64 (-1,) out."""
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, channels, image_size, image_size))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float64), (-1,))]))


def log_pyfunc_model(tracking_uri: str, run_id: str, checkpoint: dict[str, Any], file_name: str) -> str:
    """Log `checkpoint` (a training checkpoint dict, full or weights-only) into run `run_id` as the pyfunc
    model `model`, its weights-only part as the one artifact named `file_name` (e.g. best-epoch02.ckpt).

    Returns the model URI (`models:/m-...` in MLflow 3; `runs:/RUN_ID/model` reaches it too). The image
    size and channels come from the checkpoint's config. Raises what MLflow raises when the store
    cannot be written (the training run calls this through its logger's guard).
    """
    config = checkpoint["pneumo"]["config"]["data"]
    image_size, channels = int(config["image_size"]), int(config["channels"])
    example = np.zeros((1, channels, image_size, image_size), dtype=np.uint8)
    requirements = [f"{name}=={version(name)}" for name in SERVED_PACKAGES]
    with tempfile.TemporaryDirectory() as folder, default_store(tracking_uri):  # the caller's URI comes back
        slim = Path(folder) / file_name
        torch.save(weights_only_checkpoint(checkpoint), slim)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT_PATH, python_model=PneumoniaModel(), artifacts={CHECKPOINT_ARTIFACT: str(slim)},
                signature=signature(image_size, channels), input_example=example,
                code_paths=[str(PROJECT_ROOT / "pneumo")], pip_requirements=requirements)
    log.info("model logged in MLflow format (its one artifact: %s): serve it with\n  mlflow models serve -m "
             "runs:/%s/%s --env-manager local", file_name, run_id, MODEL_ARTIFACT_PATH)
    return info.model_uri
