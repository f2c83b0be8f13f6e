"""A trained model as everything downstream of training uses it: evaluate.py, bulk prediction, the ONNX
export, the registry's promotion and the review page all load a checkpoint through `load_trained`, so
they agree on the weights, the operating threshold and the temperature.

`probability_tensor` is the one place the probability is computed, sigmoid(model(preprocess(x)) / T): the
PyTorch scorers (`TrainedModel.probabilities`, `pneumo.evaluation.predict.torch_scorer`, the benchmark's
model) call it, and the ONNX export traces it into its graph. Hydra (`pneumo.models.factory`) is imported
only when a checkpoint is loaded, so the benchmark can import this module."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pneumo.evaluation.calibration import checkpoint_temperature
from pneumo.models.checkpoints import load_checkpoint, load_weights


def probability_tensor(module: Any, images_uint8: torch.Tensor, temperature: float) -> torch.Tensor:
    """P(pneumonia), float32 (N,), for uint8 images (N, C, H, W) on `module`'s device: the module's
    `preprocess(train=False)`, its `model`, then sigmoid(logit / temperature).

    No gradient handling here (the caller wraps it in `torch.no_grad()`; the ONNX export traces it)."""
    x = module.preprocess(images_uint8, train=False)
    return torch.sigmoid(module.model(x).float().reshape(-1) / temperature)


@dataclass
class TrainedModel:
    """A checkpoint's model in eval mode on the CPU, with what it was trained with.

    ``threshold``: {"policy": str, "value": float}, the operating threshold chosen on validation (0.5 for
    checkpoints without one). ``calibration``: the stored record ({"method": "none"} without one).
    ``temperature``: T > 0 of sigmoid(logit / T) (1.0 when uncalibrated). ``image_size`` (pixels a side)
    and ``channels`` (1 or 3): the input the model was trained on. ``train_run_id``: the training run's
    MLflow run id, or None.
    """

    module: Any
    path: Path
    checkpoint: dict[str, Any]
    train_config: DictConfig
    threshold: dict[str, Any]
    calibration: dict[str, Any]
    temperature: float

    @property
    def image_size(self) -> int:
        """Pixels a side of the images the model was trained on."""
        return int(self.train_config.data.image_size)

    @property
    def channels(self) -> int:
        """Channels (1 or 3) of the images the model was trained on."""
        return int(self.train_config.data.channels)

    @property
    def train_run_id(self) -> str | None:
        """The training run's MLflow run id, or None (trained with logger=none, or imported)."""
        return (self.checkpoint["pneumo"].get("mlflow") or {}).get("run_id")

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """P(pneumonia) for uint8 images (N, C, H, W) as `pneumo.data.readers.read_image` decodes and the
        data module resizes them: the module's own preprocessing, then sigmoid(logit / T). float64 (N,)."""
        batch = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        with torch.no_grad():
            return probability_tensor(self.module, batch.to(torch.uint8), self.temperature).double().numpy()


def load_trained(path: str | Path) -> TrainedModel:
    """Rebuild a checkpoint's model (strict weight load) with its threshold and temperature.

    Raises:
        pneumo.models.checkpoints.CheckpointError: the file is missing, unreadable, not a pneumo checkpoint,
            or its weights do not fit the architecture its config describes.
    """
    from pneumo.models.factory import build_module  # Hydra: only when a checkpoint is rebuilt

    path = Path(path).expanduser()
    checkpoint = load_checkpoint(path)
    train_config = OmegaConf.create(checkpoint["pneumo"]["config"])
    module = build_module(train_config, train=False)
    load_weights(module, checkpoint, path)
    module.eval()
    temperature = checkpoint_temperature(checkpoint["pneumo"])
    module.set_temperature(temperature)  # Grad-CAM titles and any predict_step agree with the probabilities
    return TrainedModel(
        module=module, path=path, checkpoint=checkpoint, train_config=train_config,
        threshold=dict(checkpoint["pneumo"].get("threshold") or {"policy": "fixed", "value": 0.5}),
        calibration=dict(checkpoint["pneumo"].get("calibration") or {"method": "none"}),  # older: T = 1
        temperature=temperature)


def locate_checkpoint(value: str, tracking_uri: str | None, download_dir: Path) -> tuple[Path, Any]:
    """The checkpoint file `ckpt=` names, for evaluate.py and bulk prediction alike: a path (returned as
    given), `best` / `last` (the newest run's, `pneumo.models.checkpoints.resolve_checkpoint_path`), or an
    MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model) downloaded into
    `download_dir` from the store `pneumo.tracking.registry.default_tracking_uri(tracking_uri)` picks.
    Prints what a name or URI resolved to. Returns (path, the `ResolvedModel` for a URI or None).

    Raises what `resolve_checkpoint_path` and `pneumo.tracking.registry.resolve_model` raise.
    """
    from pneumo.models.checkpoints import resolve_checkpoint_path
    from pneumo.paths import PROJECT_ROOT
    from pneumo.tracking.registry import default_tracking_uri, is_model_uri, resolve_model  # MLflow: only here

    model = resolve_model(value, default_tracking_uri(tracking_uri), dst=download_dir) if is_model_uri(value) else None
    path = model.checkpoint if model else resolve_checkpoint_path(value, PROJECT_ROOT)
    if path != Path(value).expanduser():
        registered = f" (registered {model.name} version {model.version})" if model and model.version else ""
        print(f"ckpt={value}: {path}{registered}")
    return path, model
