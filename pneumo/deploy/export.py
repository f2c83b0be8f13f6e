"""The ONNX export: a checkpoint's model with its preprocessing and temperature inside one graph, and the
JSON sidecar that says how to use it.

The graph takes what pneumo's decoder gives (`pneumo.data.readers.read_image`: uint8, resized to the
checkpoint's image size, stacked into (N, C, H, W), N dynamic) and returns float32 (N,) P(pneumonia) =
sigmoid(logit / T), T the checkpoint's temperature (1 when uncalibrated). So ONNX Runtime, bulk prediction
and evaluate.py give one probability for one file.

Exporter: `torch.onnx.export(dynamo=True)` (torch.export + onnxscript), PyTorch's default and maintained
exporter since 2.9; the TorchScript one (dynamo=False) also works here and exports 3-6x faster, but
PyTorch marks it deprecated ("will be removed"). Weights are stored inside model.onnx (no .onnx.data file).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumo.data.labels import CLASS_NAMES
from pneumo.evaluation.definedness import json_safe
from pneumo.evaluation.predict import file_sha256
from pneumo.evaluation.trained import TrainedModel, probability_tensor

SIDECAR_FORMAT = "pneumo-onnx/1"
INPUT_NAME, OUTPUT_NAME = "images", "probability"
PARITY_TOLERANCE = 1e-5  # max |P_onnx - P_torch| the export accepts on its check batch


class ExportError(RuntimeError):
    """The export failed or its graph disagrees with the PyTorch model; the message says which and why."""


class ProbabilityGraph(nn.Module):
    """uint8 (N, C, H, W) -> float32 (N,) sigmoid(logit / temperature): what is traced into the graph.

    `pneumo.evaluation.trained.probability_tensor`, the function `TrainedModel.probabilities` calls, so
    the parity check compares like with like.
    """

    def __init__(self, trained: TrainedModel) -> None:
        super().__init__()
        self.module = trained.module.eval()
        self.temperature = float(trained.temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float32 (N,) P(pneumonia)."""
        return probability_tensor(self.module, images, self.temperature)


def sidecar_path(model_path: str | Path) -> Path:
    """model.onnx -> model.json: the sidecar lies beside the graph, same name, suffix .json."""
    return Path(model_path).with_suffix(".json")


def export_onnx(trained: TrainedModel, output_dir: Path, *, data_summary: dict[str, Any] | None = None,
                check_images: np.ndarray | None = None, tracking_uri: str | None = None) -> Path:
    """Write `output_dir`/model.onnx and its sidecar model.json; returns the model.onnx path.

    `data_summary`: what the model was trained on (see `data_summary`), written into the sidecar; None
    takes the checkpoint config's. `check_images`: uint8 (N, C, H, W) images for the parity check (random
    ones when None); the export fails if ONNX Runtime and `trained.probabilities` differ by more than
    `PARITY_TOLERANCE` on them. `tracking_uri`: recorded in the sidecar (default: the checkpoint's).

    Raises:
        ExportError: torch.onnx.export failed (with the exporter's first line), or the parity check failed.
        ValueError: `check_images` are not uint8 (N, C, H, W) at the checkpoint's channels and size.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "model.onnx"
    size, channels = trained.image_size, trained.channels
    graph = ProbabilityGraph(trained).eval()
    example = torch.from_numpy(_example_images(2, channels, size))  # N = 2: N stays symbolic, not 1
    started = time.perf_counter()
    try:
        with torch.no_grad(), _quiet():
            torch.onnx.export(graph, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}})
    except Exception as error:  # the exporter raises many kinds; name the model and the first line
        raise ExportError(f"exporting {trained.path} to ONNX failed: {type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}") from error
    seconds = time.perf_counter() - started
    images = _example_images(5, channels, size, seed=1) if check_images is None else check_images
    parity = check_parity(trained, path, images)
    metadata = sidecar(trained, data_summary=data_summary, tracking_uri=tracking_uri,
                       export={"exporter": "torch.onnx.export(dynamo=True)", "seconds": round(seconds, 2),
                               "parity_max_abs_diff": parity, "parity_images": len(images),
                               "opset": _opset(path)})
    sidecar_path(path).write_text(json.dumps(json_safe(metadata), indent=2, allow_nan=False))
    return path


def check_parity(trained: TrainedModel, model_path: Path, images: np.ndarray) -> float:
    """max |P_onnx - P_torch| over `images` (uint8 (N, C, H, W)); raises ExportError above the tolerance."""
    import onnxruntime as ort

    _check_images(images, trained.channels, trained.image_size)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    onnx_probs = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images)})[0].astype(np.float64)
    difference = float(np.abs(onnx_probs - trained.probabilities(images)).max()) if len(images) else 0.0
    if not difference <= PARITY_TOLERANCE:
        raise ExportError(f"{model_path}: ONNX Runtime and PyTorch disagree by {difference:.3g} (> "
                          f"{PARITY_TOLERANCE:g}) on {len(images)} images; the graph was not kept as valid")
    return difference


def sidecar(trained: TrainedModel, *, data_summary: dict[str, Any] | None = None,
            tracking_uri: str | None = None, export: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar's content: how to feed the graph, what it returns, the operating threshold and where
    the model came from (checkpoint, its SHA-256, the training run)."""
    stored = trained.checkpoint["pneumo"].get("mlflow") or {}
    size, channels = trained.image_size, trained.channels
    return {
        "format": SIDECAR_FORMAT,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", channels, size, size], "layout": "NCHW",
                  "range": "0-255, decoded and resized as pneumo.data.readers.read_image does "
                           "(JPEG draft mode, bilinear resize to size x size, aspect ratio not kept)"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N"],
                   "meaning": "P(PNEUMONIA) = sigmoid(logit / temperature)"},
        "image_size": size,
        "channels": channels,
        "class_names": list(CLASS_NAMES),
        "positive_class": CLASS_NAMES[1],
        "threshold": float(trained.threshold["value"]),
        "threshold_policy": str(trained.threshold.get("policy", "fixed")),
        "temperature": float(trained.temperature),
        "calibration": trained.calibration,
        "dicom_voi": str(trained.train_config.data.get("dicom", {}).get("voi", "auto")),
        "train_run_id": trained.train_run_id,
        "tracking_uri": tracking_uri or stored.get("tracking_uri"),
        "checkpoint": {"path": str(Path(trained.path).resolve()), "sha256": file_sha256(trained.path)},
        "model": {"target": str(trained.train_config.model.net.get("_target_")),
                  "name": str(trained.train_config.model.net.get("name", "seed_cnn"))},
        "data": data_summary if data_summary is not None else data_summary_of(trained),
        "validation": trained.checkpoint["pneumo"].get("validation"),
        "versions": {name: version(name) for name in ("torch", "onnx", "onnxruntime")},
        "export": export or {},
    }


def data_summary_of(trained: TrainedModel, split_counts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training data as the checkpoint's config names it, with the split counts when known
    (the training run's data/summary.json; None when it cannot be read)."""
    data = trained.train_config.data
    source = str(data.get("csv") or data.get("root") or "")
    return {"name": str(data.get("name") or Path(source).name), "source": source,
            "image_size": int(data.image_size), "channels": int(data.channels), "split_counts": split_counts}


def _check_images(images: np.ndarray, channels: int, size: int) -> None:
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[1:] == (channels, size, size)):
        shape = getattr(images, "shape", None)
        raise ValueError(f"images must be uint8 (N, {channels}, {size}, {size}), as read_image decodes them; "
                         f"got {getattr(images, 'dtype', type(images).__name__)} {shape}")


def _example_images(n: int, channels: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def _opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(entry.version) for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


@contextlib.contextmanager
def _quiet():
    """The dynamo exporter prints its steps to stdout and onnxscript's passes log each at INFO; keep them
    out of the user's terminal and the run's log (warnings and errors still pass)."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def run_export(cfg: Any) -> dict[str, Any]:
    """`python -m pneumo.export`: the files, then the model logged into the training run.

    Config keys: ckpt (a path, or best/last), format (onnx), tracking_uri (null: the checkpoint's),
    log_to_mlflow, output_dir. Returns {"model", "sidecar", "mlflow": model URI or None, "mlflow_problem"}.
    A training run that cannot be reached is reported and the files are kept; nothing else is caught.
    """
    from pneumo.config import PROJECT_ROOT
    from pneumo.deploy.onnx_tracking import find_training_run, log_onnx_model, training_split_counts
    from pneumo.evaluation.trained import load_trained
    from pneumo.models.checkpoints import resolve_checkpoint_path

    if str(cfg.format) != "onnx":
        raise ValueError(f"format={cfg.format}: only onnx is written")
    ckpt = resolve_checkpoint_path(str(cfg.ckpt), PROJECT_ROOT)
    if str(cfg.ckpt) in ("best", "last"):
        print(f"ckpt={cfg.ckpt}: {ckpt}")
    trained = load_trained(ckpt)
    stored = trained.checkpoint["pneumo"].get("mlflow") or {}
    tracking_uri = cfg.get("tracking_uri") or stored.get("tracking_uri")
    run = (find_training_run(trained.train_run_id, tracking_uri) if cfg.get("log_to_mlflow", True)
           else "log_to_mlflow=false")
    counts = training_split_counts(run) if not isinstance(run, str) else None
    path = export_onnx(trained, Path(cfg.output_dir), data_summary=data_summary_of(trained, counts),
                       tracking_uri=tracking_uri)
    metadata = json.loads(sidecar_path(path).read_text())
    print(f"ONNX model: {path} ({path.stat().st_size / 1e6:.1f} MB; input uint8 (N, {trained.channels}, "
          f"{trained.image_size}, {trained.image_size}); P(PNEUMONIA) = sigmoid(logit / {trained.temperature:.4g}); "
          f"threshold {trained.threshold['value']:.4f}; ONNX Runtime vs PyTorch max |dp| = "
          f"{metadata['export']['parity_max_abs_diff']:.2g})\nSidecar: {sidecar_path(path)}")
    model_uri, problem = None, run if isinstance(run, str) else None
    if problem is None:
        try:
            model_uri = log_onnx_model(path, run)
        except Exception as error:  # the store failed mid-way: the files stand, say what did not happen
            problem = f"logging to run {run.run_id} at {run.tracking_uri} failed: {type(error).__name__}: {error}"
    if model_uri:
        print(f"MLflow: logged into training run {run.run_id} as {model_uri} ({run.tracking_uri})")
    else:
        print(f"MLflow: not logged ({problem}); the files above are complete")
    return {"model": str(path), "sidecar": str(sidecar_path(path)), "mlflow": model_uri, "mlflow_problem": problem}
