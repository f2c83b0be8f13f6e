"""Is bulk prediction as fast as its slower half?  ``python -m pneumo.bench --predict N``

On N synthetic 1-3 megapixel JPEGs (the folder bench's set, written once under
<project>/.cache/bench-synthetic-<N>; or ``--data-root``), in one process and in this order:

1. ``decode_img_s``: the parallel decode alone, `pneumo.evaluation.predict.decode_batches` over all N files
   with the pipeline's workers and batch size, nothing scored (a first pass reads the files into the page
   cache, so every later pass reads them from memory alike);
2. per runtime (``torch``: PyTorch eager on ``--device``; ``onnx``: ONNX Runtime on the CPU, from the
   model exported by `pneumo.deploy.export`), the inference ceiling ``<runtime>_ceiling_img_s``: the
   runtime's `probabilities` on pre-decoded uint8 batches for ``--ceiling-seconds``, then the pipeline
   ``<runtime>_pipeline_img_s``: `pneumo.evaluation.predict.stream_folder` over the folder into a fresh
   output folder (decode workers, scoring, predictions.csv), timed from its first batch to its last;
3. ``<runtime>_over_bound`` = pipeline / min(decode, ceiling) (target >= 0.8: the pipeline is as fast as
   the slower of its two halves allows), and ``onnx_over_torch_ceiling`` = ONNX Runtime's ceiling / PyTorch
   eager's.

The model is the config's network (``--model``, untrained: speed does not depend on the weights) in a
`PneumoniaClassifier`, so the preprocessing is evaluate.py's. MLflow and Hydra are not needed.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from pneumo.bench.folder import default_data_root, ensure_bench_data
from pneumo.bench.machine import describe_device, load_average, log, resolve_device
from pneumo.bench.models import ModelSpec
from pneumo.data.datasets import find_images
from pneumo.evaluation.predict import Scorer, decode_batches, resolve_workers, stream_folder, torch_scorer
from pneumo.evaluation.trained import probability_tensor

PREDICT_RESULT_KEYS = (
    "decode_img_s", "torch_ceiling_img_s", "torch_pipeline_img_s", "torch_over_bound", "onnx_ceiling_img_s",
    "onnx_pipeline_img_s", "onnx_over_bound", "onnx_over_torch_ceiling", "n_images", "image_size", "batch_size",
    "workers", "model", "device",
)
CEILING_IMAGES = 256  # distinct pre-decoded images the ceilings cycle through


@dataclass
class BenchModel:
    """What `torch_scorer` and `export_onnx` read of a `TrainedModel`, for an untrained network built
    without Hydra: the module, its input, threshold 0.5, T = 1, and a file standing for the checkpoint."""

    module: Any
    path: Path
    image_size: int
    channels: int = 1
    temperature: float = 1.0
    threshold: dict[str, Any] = field(default_factory=lambda: {"policy": "fixed", "value": 0.5})
    calibration: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    train_run_id: str | None = None
    checkpoint: dict[str, Any] = field(default_factory=lambda: {"pneumo": {}})
    train_config: Any = None

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """As `TrainedModel.probabilities`: uint8 (N, C, H, W) -> float64 (N,)."""
        with torch.no_grad():
            batch = torch.from_numpy(np.asarray(images))
            return probability_tensor(self.module, batch, self.temperature).double().numpy()


def bench_model(spec: ModelSpec, image_size: int, folder: Path) -> BenchModel:
    """The config's network, untrained, in the LightningModule that evaluation uses (its preprocessing)."""
    from pneumo.training.module import PneumoniaClassifier

    module = PneumoniaClassifier(spec.build(image_size), optimizer=None, mean=spec.mean, std=spec.std).eval()
    path = folder / "bench-model.pt"
    torch.save(module.state_dict(), path)  # the export records a checkpoint file and its SHA-256
    config = OmegaConf.create({"data": {"image_size": image_size, "channels": 1, "name": "bench", "root": ""},
                               "model": {"net": {"_target_": type(module.model).__module__ + "." +
                                                 type(module.model).__name__, "name": spec.name}}})
    return BenchModel(module=module, path=path, image_size=image_size, train_config=config)


def decode_rate(files: list[str], image_size: int, batch_size: int, workers: int,
                keep: int = CEILING_IMAGES) -> tuple[float, np.ndarray]:
    """Images per second of the parallel decode alone over `files`; and the first `keep` decoded images."""
    kept: list[np.ndarray] = []
    count, started = 0, time.perf_counter()
    for images, indices, _ in decode_batches(files, image_size, 1, batch_size=batch_size, workers=workers):
        count += len(indices)
        if sum(len(k) for k in kept) < keep:
            kept.append(images)
    seconds = time.perf_counter() - started
    return count / seconds, np.concatenate(kept)[:keep]


def ceiling_rate(scorer: Scorer, images: np.ndarray, batch_size: int, seconds: float) -> float:
    """Images per second of `scorer.probabilities` on pre-decoded uint8 batches (one warm-up batch first)."""
    batches = [images[start:start + batch_size] for start in range(0, len(images), batch_size)]
    batches = [b for b in batches if len(b) == batch_size] or batches
    scorer.probabilities(batches[0])
    count, started = 0, time.perf_counter()
    while True:
        for batch in batches:
            scorer.probabilities(batch)
            count += len(batch)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count / elapsed


def pipeline_rate(folder: Path, scorer: Scorer, batch_size: int, workers: int) -> float:
    """Images per second of `stream_folder` (decode workers, scoring, predictions.csv) into a fresh folder."""
    output = Path(tempfile.mkdtemp(prefix="pneumo-bench-predict-"))
    try:
        return stream_folder(folder, scorer, output, batch_size=batch_size, workers=workers,
                             progress=False)["images_per_second"]
    finally:
        shutil.rmtree(output, ignore_errors=True)


def predict_folder_of(args: argparse.Namespace) -> Path:
    """The images to predict: --data-root (its train/ when it has one), else the synthetic set written once."""
    if args.data_root:
        root = Path(args.data_root).expanduser()
    else:
        root = default_data_root(args.predict, args.synthetic_min_side, args.synthetic_max_side)
        log(f"synthetic set of {args.predict} JPEGs "
            f"({args.synthetic_min_side}-{args.synthetic_max_side} px a side) at {root} (written once)")
        started = time.perf_counter()
        ensure_bench_data(root, args.predict, args.synthetic_min_side, args.synthetic_max_side)
        log(f"synthetic set ready in {time.perf_counter() - started:.1f} s")
    return root / "train" if (root / "train").is_dir() else root


def run_predict_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of one `--predict` run, keyed as in PREDICT_RESULT_KEYS (and more)."""
    from pneumo.deploy.bulk import onnx_scorer
    from pneumo.deploy.export import export_onnx
    from pneumo.deploy.onnx_runtime import OnnxModel

    device = resolve_device(args.device)
    folder = predict_folder_of(args)
    files, _ = find_images(folder)
    workers = resolve_workers(args.workers)
    spec = ModelSpec.read(args.model)
    result: dict[str, Any] = {"n_images": len(files), "image_size": args.image_size, "batch_size": args.batch_size,
                              "workers": workers, "model": spec.name, "device": describe_device(device),
                              "folder": str(folder), "load_at_start": load_average()}
    log("first pass: reading the files into the page cache")
    decode_rate(files, args.image_size, args.batch_size, workers)
    result["decode_img_s"], images = decode_rate(files, args.image_size, args.batch_size, workers)
    log(f"parallel decode ({workers} workers): {result['decode_img_s']:.1f} img/s")
    work = Path(tempfile.mkdtemp(prefix="pneumo-bench-model-"))
    try:
        model = bench_model(spec, args.image_size, work)
        scorers = {"torch": torch_scorer(model, device.type, sha256="bench")}
        started = time.perf_counter()
        onnx_path = export_onnx(model, work / "onnx", check_images=images[:8])
        result["onnx_export_s"] = time.perf_counter() - started
        scorers["onnx"] = onnx_scorer(OnnxModel(onnx_path, batch_size=args.batch_size))
        for name, scorer in scorers.items():
            ceiling = ceiling_rate(scorer, images, args.batch_size, args.ceiling_seconds)
            pipeline = pipeline_rate(folder, scorer, args.batch_size, workers)
            bound = min(result["decode_img_s"], ceiling)
            result.update({f"{name}_ceiling_img_s": ceiling, f"{name}_pipeline_img_s": pipeline,
                           f"{name}_over_bound": pipeline / bound})
            log(f"{name}: ceiling {ceiling:.1f} img/s, pipeline {pipeline:.1f} img/s = {pipeline / bound:.2f} of "
                f"min(decode, ceiling) = {bound:.1f} img/s (target >= 0.8)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["onnx_over_torch_ceiling"] = result["onnx_ceiling_img_s"] / result["torch_ceiling_img_s"]
    log(f"ONNX Runtime's ceiling / PyTorch eager's ({device.type}): {result['onnx_over_torch_ceiling']:.2f}")
    return result

