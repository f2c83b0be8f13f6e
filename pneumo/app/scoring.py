"""One uploaded file, reviewed: decoded as pneumo decodes it, scored, explained.

The probability is evaluate.py's for the same file because every step is the same one: the bytes go into
a file under their own name (the reader picks the format by name and content, as for a file on disk),
`pneumo.data.readers.read_image` decodes and resizes them to the model's image_size exactly as the data
module's cache and the uncached loader do, and the model's own `probabilities` scores that uint8 array
(evaluation's preprocessing and temperature). The file lives in a temporary folder that is removed before
the answer leaves. A file no reader takes gets `BadImageError`'s reason, the one training reports.
"""
from __future__ import annotations

import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumo.app.pictures import overlay, png_data_url, to_rgb
from pneumo.app.reviewed_model import ReviewedModel
from pneumo.data.image_formats import BadImageError
from pneumo.data.readers import read_image
from pneumo.evaluation.gradcam import gradcam_maps, resolve_target_layer

POSITIVE, NEGATIVE = "PNEUMONIA", "NORMAL"
PRINTED_DECIMALS = 6  # as predictions.csv writes the probability


class Reviewer:
    """Reviews uploads one at a time (Grad-CAM briefly changes the model's flags, so calls are serialised).

    ``display_size``: pixels a side of the pictures returned. ``work_dir``: where each upload is written
    for the moment it is read (a folder the caller owns and removes). ``target_layer``: Grad-CAM's layer,
    a dotted module name or None for the model's own choice.
    """

    def __init__(self, model: ReviewedModel, display_size: int, work_dir: Path, target_layer: str | None = None):
        self.model, self.display_size, self.work_dir = model, display_size, Path(work_dir)
        self.target_layer = target_layer
        self._lock = threading.Lock()

    def review(self, content: bytes, filename: str) -> dict[str, Any]:
        """The page's answer for one file, JSON-ready: {"file", "ok": True, "probability" (float),
        "probability_text", "decision" (PNEUMONIA | NORMAL), "threshold", "decoded" and "gradcam" (PNG data
        URLs; gradcam None when unavailable), "gradcam_note"}, or {"file", "ok": False, "reason"} for a file
        that is not an image pneumo can read.
        """
        name = Path(filename or "upload").name or "upload"
        with self._lock, tempfile.TemporaryDirectory(prefix="upload-", dir=self.work_dir) as folder:
            path = Path(folder) / safe_name(name)
            path.write_bytes(content)
            try:
                model_input = read_image(path, self.model.image_size, self.model.channels, self.model.dicom_voi)
                shown = read_image(path, self.display_size, self.model.channels, self.model.dicom_voi)
            except BadImageError as error:
                return {"file": name, "ok": False, "reason": error.reason}
            probability = float(self.model.probabilities(model_input[None])[0])
            heat, note = self._gradcam(path, model_input)
        return {"file": name, "ok": True, "probability": probability,
                "probability_text": f"{probability:.{PRINTED_DECIMALS}f}",
                "decision": POSITIVE if probability >= self.model.threshold else NEGATIVE,
                "threshold": self.model.threshold, "decoded": png_data_url(to_rgb(shown)),
                "gradcam": None if heat is None else png_data_url(overlay(shown, heat)), "gradcam_note": note}

    def _gradcam(self, path: Path, model_input: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        """The Grad-CAM map (h, w) in [0, 1] of the explained (predicted) class and a note, or (None, why)."""
        explainer = self.model.explainer
        if explainer is None:
            return None, self.model.gradcam_note
        if model_input.shape != (explainer.channels, explainer.image_size, explainer.image_size):  # ONNX's own size
            model_input = read_image(path, explainer.image_size, explainer.channels, self.model.dicom_voi)
        module = explainer.module
        try:
            layer = resolve_target_layer(module.model, self.target_layer)
        except ValueError as error:
            return None, f"no Grad-CAM: {error}"
        with torch.no_grad():
            inputs = module.preprocess(torch.from_numpy(model_input[None]), train=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            heat = gradcam_maps(module.model, inputs, layer)[0]
        empty = [str(w.message) for w in caught if "Grad-CAM maps are empty" in str(w.message)]
        note = self.model.gradcam_note
        if empty:
            note = ("The Grad-CAM map is empty: no positive evidence for the predicted class at this layer, "
                    "or the gradient vanished there (a very confident model).")
        return heat, note


def safe_name(name: str) -> str:
    """The upload's file name reduced to letters, digits, '.', '-' and '_' (its suffix kept, so the reader
    picks the same format as for the file on disk), at most 120 characters; "upload" when nothing is left."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[-120:]
    return cleaned or "upload"
