"""An exported model.onnx scored with ONNX Runtime: `OnnxModel`, the same interface as
`pneumo.evaluation.trained.TrainedModel.probabilities` (uint8 images in, P(pneumonia) out).

Needs onnxruntime and the sidecar model.json written by `pneumo.deploy.export`; not torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

SIDECAR_FORMAT = "pneumo-onnx/1"  # the same string as pneumo.deploy.export's (kept torch-free here)


class OnnxModelError(ValueError):
    """model.onnx or its sidecar is missing or unusable; the message names the file and the fix."""


class OnnxModel:
    """model.onnx in an ONNX Runtime session, with its sidecar.

    Attributes: ``threshold`` (the operating threshold on P(pneumonia)), ``image_size`` (pixels a side),
    ``channels`` (1 or 3), ``temperature`` (T of sigmoid(logit / T), already inside the graph),
    ``metadata`` (the sidecar as a dict), ``path`` (model.onnx).

    `threads`: ONNX Runtime's intra-op threads (0: its default, one per physical core). `providers`:
    execution providers in order of preference (default: CPU). `batch_size`: the most images one
    session run gets; larger inputs are split, so memory stays bounded.

    Raises:
        OnnxModelError: model.onnx or model.json is missing, the sidecar is not pneumo's, or ONNX Runtime
            cannot load the graph.
    """

    def __init__(self, path: str | Path, *, threads: int = 0, providers: list[str] | None = None,
                 batch_size: int = 256) -> None:
        import onnxruntime as ort

        self.path = Path(path).expanduser()
        sidecar = self.path.with_suffix(".json")
        if not self.path.is_file():
            raise OnnxModelError(f"ONNX model {self.path} does not exist: export one with "
                                 f"python -m pneumo.export ckpt=PATH.ckpt")
        if not sidecar.is_file():
            raise OnnxModelError(f"{self.path} has no sidecar {sidecar} (threshold, input size, temperature): "
                                 f"export it again with python -m pneumo.export ckpt=PATH.ckpt")
        try:
            self.metadata: dict[str, Any] = json.loads(sidecar.read_text())
        except (OSError, ValueError) as error:
            raise OnnxModelError(f"sidecar {sidecar} is not readable JSON ({error}): export the model again") from error
        if self.metadata.get("format") != SIDECAR_FORMAT:
            raise OnnxModelError(f"sidecar {sidecar} is not a pneumo ONNX sidecar (format "
                                 f"{self.metadata.get('format')!r}, expected {SIDECAR_FORMAT!r})")
        self.threshold = float(self.metadata["threshold"])
        self.image_size = int(self.metadata["image_size"])
        self.channels = int(self.metadata["channels"])
        self.temperature = float(self.metadata["temperature"])
        self.batch_size = int(batch_size)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3  # errors only: no per-session chatter in a bulk run's terminal
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise OnnxModelError(f"ONNX Runtime cannot load {self.path}: {error}") from error
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @property
    def sha256(self) -> str | None:
        """The SHA-256 of the checkpoint the graph was exported from (the sidecar's), or None."""
        return (self.metadata.get("checkpoint") or {}).get("sha256")

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """P(pneumonia) for uint8 images (N, C, H, W) as `pneumo.data.readers.read_image` decodes them, C and
        H = W the sidecar's channels and image size: float64 (N,).

        Raises:
            ValueError: another dtype or shape, naming the expected one.
        """
        images = np.asarray(images)
        expected = (self.channels, self.image_size, self.image_size)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"{self.path.name} takes uint8 images (N, {', '.join(map(str, expected))}); got "
                             f"{images.dtype} {images.shape}. Decode with pneumo.data.readers.read_image(path, "
                             f"{self.image_size}, {self.channels})")
        if not len(images):
            return np.zeros(0, dtype=np.float64)
        parts = [self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch)})[0]
                 for batch in np.array_split(images, -(-len(images) // self.batch_size))]
        return np.concatenate(parts).reshape(-1).astype(np.float64)
