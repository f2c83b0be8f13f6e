"""The model behind the review page, whatever `model=` named: a checkpoint, an ONNX file or a registered model.

Every form ends as one `ReviewedModel`: what the page shows about it (name, version, training run, threshold)
and how it scores, so the page never asks which form it was given. The probabilities are the ones the rest
of the project computes: `TrainedModel.probabilities` for a checkpoint (the evaluation's preprocessing and
temperature) and `OnnxModel.probabilities` for an ONNX export. Grad-CAM needs the PyTorch model: an ONNX
file gets it from the checkpoint its sidecar (model.json) names, when that file is there.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.evaluation.trained import TrainedModel, load_trained
from pneumo.tracking.registry import is_model_uri, resolve_model

ONNX_SUFFIX = ".onnx"
NO_GRADCAM = ("Grad-CAM needs the PyTorch checkpoint: this ONNX file's sidecar (model.json) names {what}. "
              "Start the page with model=PATH.ckpt, or keep the checkpoint where the sidecar says, to see it.")


@dataclass
class ReviewedModel:
    """A loaded model with what the page says about it.

    ``source``: the `model=` value. ``kind``: "checkpoint" or "onnx". ``name`` / ``version``: the registered
    model's (version None when not registered). ``train_run_id``: the MLflow run that trained it, or None.
    ``threshold`` in [0, 1] and its ``threshold_policy``: the operating point (P >= threshold is PNEUMONIA).
    ``image_size`` (pixels a side), ``channels`` (1 or 3) and ``dicom_voi`` ("auto" or "none"): how images
    are decoded for it (`pneumo.data.readers.read_image`). ``probabilities``: uint8 (N, C, H, W) ->
    float64 (N,) P(pneumonia). ``explainer``: the checkpoint Grad-CAM runs on, or None, and then
    ``gradcam_note`` says why there is none.
    """

    source: str
    kind: str
    name: str
    version: str | None
    train_run_id: str | None
    threshold: float
    threshold_policy: str
    temperature: float
    image_size: int
    channels: int
    dicom_voi: str
    probabilities: Callable[[np.ndarray], np.ndarray]
    explainer: TrainedModel | None = None
    gradcam_note: str | None = None

    def facts(self) -> dict[str, Any]:
        """What the page shows about the model, JSON-ready."""
        return {"source": self.source, "kind": self.kind, "name": self.name, "version": self.version,
                "train_run_id": self.train_run_id, "threshold": self.threshold,
                "threshold_policy": self.threshold_policy, "temperature": self.temperature,
                "image_size": self.image_size, "channels": self.channels, "gradcam_note": self.gradcam_note}


def load_reviewed_model(reference: str, tracking_uri: str, download_dir: Path) -> ReviewedModel:
    """The model `reference` names: a .ckpt path, an .onnx path, or a models:/ (runs:/) URI looked up in
    `tracking_uri` and downloaded into `download_dir` (the page's temporary folder).

    Raises:
        pneumo.models.checkpoints.CheckpointError: a checkpoint that is missing, unreadable or not pneumo's.
        pneumo.tracking.registry.ModelUriError / ConnectionError: a URI naming nothing, or an unreachable store.
        pneumo.deploy.onnx_runtime.OnnxModelError: an .onnx file or its sidecar (model.json) missing or unusable.
        ImportError: an ONNX file without the ONNX runtime support installed (the message says what to install).
    """
    if is_model_uri(reference):
        resolved = resolve_model(reference, tracking_uri, download_dir)
        model = _from_checkpoint(load_trained(resolved.checkpoint), reference)
        model.name = resolved.name or model.name
        model.version = resolved.version
        model.train_run_id = model.train_run_id or resolved.run_id
        return model
    path = Path(reference).expanduser()
    if path.suffix.lower() == ONNX_SUFFIX:
        return _from_onnx(path, reference)
    return _from_checkpoint(load_trained(path), reference)


def _from_checkpoint(trained: TrainedModel, source: str) -> ReviewedModel:
    data = trained.train_config.data
    return ReviewedModel(
        source=source, kind="checkpoint", name=f"{trained.path.name} ({architecture(trained.train_config)})",
        version=None, train_run_id=trained.train_run_id, threshold=float(trained.threshold["value"]),
        threshold_policy=str(trained.threshold.get("policy", "fixed")), temperature=float(trained.temperature),
        image_size=trained.image_size, channels=trained.channels,
        dicom_voi=str((data.get("dicom") or {}).get("voi", "auto")),
        probabilities=trained.probabilities, explainer=trained)


def _from_onnx(path: Path, source: str) -> ReviewedModel:
    try:
        from pneumo.deploy.onnx_runtime import OnnxModel
    except ImportError as error:
        raise ImportError(f"model={source} is an ONNX file, but its runtime support does not import ({error}). "
                          f"Fix: pip install -r requirements.txt (onnxruntime), or pass the .ckpt instead") from error
    onnx = OnnxModel(path)  # OnnxModelError (a ValueError) names a missing file or sidecar and the fix
    meta = dict(onnx.metadata)
    explainer, note = _sidecar_explainer(meta.get("checkpoint") or {})
    network = (meta.get("model") or {}).get("name")
    return ReviewedModel(
        source=source, kind="onnx", name=f"{path.name} ({network})" if network else path.name, version=None,
        train_run_id=meta.get("train_run_id"), threshold=float(onnx.threshold),
        threshold_policy=str(meta.get("threshold_policy") or "as exported"), temperature=float(onnx.temperature),
        image_size=int(onnx.image_size), channels=int(onnx.channels), dicom_voi=str(meta.get("dicom_voi", "auto")),
        probabilities=onnx.probabilities, explainer=explainer, gradcam_note=note)


def _sidecar_explainer(checkpoint: dict[str, Any]) -> tuple[TrainedModel | None, str]:
    """The checkpoint the ONNX sidecar names, for Grad-CAM, if it is there and still the exported one (same
    SHA-256); else None. With a note for the page either way."""
    from pneumo.evaluation.predict import file_sha256

    path = Path(str(checkpoint["path"])) if checkpoint.get("path") else None
    if path is None:
        return None, NO_GRADCAM.format(what="no checkpoint")
    if not path.is_file():
        return None, NO_GRADCAM.format(what=f"{path}, which is not there")
    if checkpoint.get("sha256") and file_sha256(path) != checkpoint["sha256"]:
        return None, NO_GRADCAM.format(what=f"{path}, which has changed since the export (another SHA-256)")
    return load_trained(path), f"Grad-CAM from the checkpoint the ONNX sidecar names: {path}"


def architecture(train_config: Any) -> str:
    """A short name of the network a training config built: SeedCNN, or the backbone's name."""
    net = train_config.model.get("net") or {}
    for key in ("model_name", "name", "backbone"):
        if net.get(key):
            return str(net.get(key))
    return str(net.get("_target_", "unknown network")).rsplit(".", 1)[-1]
