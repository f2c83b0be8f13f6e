"""Bulk prediction over a folder of any size on either runtime: what `evaluate.py predict_dir=...` and
`python -m pneumo.predict` run.

`runtime=torch` scores with the checkpoint's PyTorch model (Grad-CAM available); `runtime=onnx` with ONNX
Runtime, from a model.onnx given as ckpt= or exported from the checkpoint into the output folder (and
reused from there when a run resumes); `runtime=auto` takes onnx for a .onnx file and torch otherwise.
The streaming itself (parallel decoding, resumable predictions.csv, skipped files) is
`pneumo.evaluation.predict.stream_folder`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pneumo.deploy.onnx_runtime import OnnxModel
from pneumo.evaluation.predict import Scorer, file_sha256, stream_folder, torch_scorer

RUNTIMES = ("auto", "torch", "onnx")


def resolve_runtime(runtime: str, model_path: Path) -> str:
    """`torch` or `onnx` for `runtime` and the model file.

    Raises:
        ValueError: an unknown runtime, or runtime=torch with a .onnx file (which has no PyTorch weights).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime}: choose one of {', '.join(RUNTIMES)}")
    is_onnx = model_path.suffix.lower() == ".onnx"
    if runtime == "torch" and is_onnx:
        raise ValueError(f"runtime=torch cannot run {model_path} (an ONNX graph, no PyTorch weights): pass "
                         f"runtime=onnx, or ckpt=PATH to the .ckpt it was exported from")
    return "onnx" if is_onnx or runtime == "onnx" else "torch"


def onnx_scorer(model: OnnxModel) -> Scorer:
    """An ONNX Runtime session as a Scorer (no Grad-CAM: the graph has no gradients to show)."""
    return Scorer(runtime="onnx", probabilities=model.probabilities, image_size=model.image_size,
                  channels=model.channels, dicom_voi=str(model.metadata.get("dicom_voi", "auto")),
                  threshold=model.threshold, threshold_policy=str(model.metadata.get("threshold_policy", "fixed")),
                  temperature=model.temperature, model_sha256=model.sha256, source=str(model.path),
                  details={"onnx_checkpoint": (model.metadata.get("checkpoint") or {}).get("path")})


def exported_for(checkpoint: Path, folder: Path) -> Path:
    """`folder`/model.onnx exported from `checkpoint`: reused when its sidecar names the same checkpoint
    (SHA-256), else exported now (a minute or less on a CPU)."""
    from pneumo.deploy.export import export_onnx, sidecar_path
    from pneumo.evaluation.trained import load_trained  # Hydra: not for the benchmark's import of this module

    path = folder / "model.onnx"
    if path.is_file() and sidecar_path(path).is_file():
        stored = (json.loads(sidecar_path(path).read_text()).get("checkpoint") or {}).get("sha256")
        if stored == file_sha256(checkpoint):
            print(f"runtime=onnx: reusing {path} (exported from {checkpoint})")
            return path
    print(f"runtime=onnx: exporting {checkpoint} to {path} ...", flush=True)
    return export_onnx(load_trained(checkpoint), folder)


def model_path(cfg: Any) -> Path:
    """The file `ckpt=` names: a path (a .ckpt or a model.onnx), best/last (the newest run's), or an MLflow
    model URI (models:/NAME@ALIAS, runs:/ID/model), downloaded into the output folder from the store
    `pneumo.tracking.registry.default_tracking_uri` picks (tracking_uri=, else logger.tracking_uri, ...).

    Raises what `pneumo.evaluation.trained.locate_checkpoint` raises.
    """
    from pneumo.evaluation.trained import locate_checkpoint

    explicit = cfg.get("tracking_uri") or (cfg.logger.tracking_uri if cfg.get("logger") else None)
    return locate_checkpoint(str(cfg.ckpt), explicit, Path(cfg.output_dir) / "model")[0]


def run_bulk_prediction(cfg: Any) -> dict[str, Any]:
    """Score cfg.predict_dir with the model cfg.ckpt names, into cfg.output_dir; returns
    `stream_folder`'s summary.

    Config keys: ckpt, predict_dir, runtime (auto/torch/onnx), batch_size, workers (decoding processes:
    auto or a count), onnx_threads (ONNX Runtime's intra-op threads, 0: its default), accelerator (torch),
    gradcam.{on_predict,n,target_layer}, output_dir.

    Raises:
        ValueError: runtime=onnx with gradcam.on_predict=true (refused before any work), or a runtime that
            does not fit the file.
        plus what loading the model and `stream_folder` raise.
    """
    path = model_path(cfg)
    runtime = resolve_runtime(str(cfg.get("runtime", "auto")), path)
    gradcam = cfg.get("gradcam") or {}
    if runtime == "onnx" and gradcam.get("on_predict") and int(gradcam.get("n", 0)) > 0:
        raise ValueError("gradcam.on_predict=true needs the PyTorch model: ONNX Runtime computes no gradients. "
                         "Pass runtime=torch (with ckpt=PATH.ckpt), or gradcam.on_predict=false")
    output_dir = Path(cfg.output_dir)
    module = None
    if runtime == "onnx":
        onnx_path = path if path.suffix.lower() == ".onnx" else exported_for(path, output_dir / "onnx")
        scorer = onnx_scorer(OnnxModel(onnx_path, threads=int(cfg.get("onnx_threads", 0)),
                                       batch_size=int(cfg.batch_size)))
    else:
        from pneumo.evaluation.trained import load_trained

        trained = load_trained(path)
        scorer = torch_scorer(trained, str(cfg.get("accelerator", "cpu")))
        module = trained.module
    return stream_folder(cfg.predict_dir, scorer, output_dir, batch_size=int(cfg.batch_size),
                         workers=cfg.get("workers", "auto"),
                         gradcam_n=int(gradcam.get("n", 0)) if gradcam.get("on_predict") and module is not None else 0,
                         gradcam_layer=gradcam.get("target_layer"))
