"""The trained model in MLflow format, so `mlflow models serve -m runs:/RUN_ID/model` answers predictions."""
from __future__ import annotations

import logging
from importlib.metadata import version

import numpy as np
import torch
from torch import nn

from pneumo.config import PROJECT_ROOT

log = logging.getLogger(__name__)

SERVED_PACKAGES = ("torch", "torchvision", "lightning", "torchmetrics", "numpy", "pillow")


class ServingModel(nn.Module):
    """uint8 images (N, C, H, W), as the data pipeline decodes them, in; pneumonia probabilities (N,) out.

    The same preprocessing as evaluation (scale to [0, 1], expand channels, normalise) and the same
    temperature scaling, sigmoid(logit / temperature), so a served prediction equals evaluate.py's
    probability for the same file. ``temperature`` (> 0): the checkpoint's
    (`pneumo.evaluation.calibration.checkpoint_temperature`); None takes the module's own
    (`PneumoniaClassifier.temperature`, 1.0 for a module without one). Raises ValueError if not > 0.
    """

    def __init__(self, module: nn.Module, temperature: float | None = None) -> None:
        super().__init__()
        self.module = module.eval()
        self.temperature = float(getattr(module, "temperature", 1.0) if temperature is None else temperature)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.module.preprocess(images.to(torch.uint8), train=False)
            return torch.sigmoid(self.module.model(x).float() / self.temperature)


def log_serving_model(logger, module: nn.Module, image_size: int, channels: int,
                      temperature: float | None = None) -> str | None:
    """Log the model with signature and input example into the logger's run; returns the model URI.
    ``temperature``: see :class:`ServingModel` (None: the module's)."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    served = ServingModel(module.cpu(), temperature)
    example = np.zeros((1, channels, image_size, image_size), dtype=np.uint8)
    signature = infer_signature(example, served(torch.from_numpy(example)).numpy())
    mlflow.set_tracking_uri(logger.tracking_uri)
    # Requirements pinned from this environment: MLflow's inference would load the model once more.
    requirements = [f"{name}=={version(name)}" for name in SERVED_PACKAGES]
    with mlflow.start_run(run_id=logger.run_id):
        info = mlflow.pytorch.log_model(served, name="model", signature=signature, input_example=example,
                                        code_paths=[str(PROJECT_ROOT / "pneumo")], pip_requirements=requirements)
    log.info("model logged in MLflow format: serve it with\n  mlflow models serve -m runs:/%s/model "
             "--env-manager local", logger.run_id)
    return info.model_uri
