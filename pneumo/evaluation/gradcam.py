"""Grad-CAM heat maps for the one-logit pneumonia classifier, and overlay figures of them.

The maps come from the maintained ``pytorch_grad_cam`` library rather than hand-written hooks.
That library expects a model that returns (B, classes) scores, while our backbones return one
logit per image (label 1 = PNEUMONIA), so the model is wrapped to return a (B, 1) column and each
image gets a target that reads the logit as evidence of PNEUMONIA or, negated, of NORMAL.

Grad-CAM needs a backward pass through the caller's model. It must not leave side effects there
(parameter ``.grad``, a switch to eval mode, hooks), because the same model may go on to be
trained, checkpointed or compared, so :func:`gradcam_maps` puts all of that back as it found it.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless machines: must happen before pyplot is imported

import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402
from torch import nn  # noqa: E402

EXPLAIN_CHOICES = ("predicted", "pneumonia", "normal")


# ---- which layer to look at ----------------------------------------------------------------------
def resolve_target_layer(model: nn.Module, name: str | None) -> nn.Module:
    """The layer whose activations Grad-CAM weighs.

    ``None`` defers to the model's own ``gradcam_layer`` (the baseline's last conv), so configs need
    no architecture knowledge; any other backbone must be told with a dotted name from
    ``model.named_modules()`` (e.g. ``features.6``). Errors name the config key and valid choices,
    because a wrong name is usually found only when an evaluation run reaches this point.
    """
    if name is None:
        if hasattr(model, "gradcam_layer"):
            return model.gradcam_layer
        raise ValueError(
            f"{type(model).__name__} has no `gradcam_layer`; choose the layer for Grad-CAM with "
            f"gradcam.target_layer=<dotted module name>, e.g. one of: {_suggest(model)}")
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        raise ValueError(f"gradcam.target_layer={name!r} is not a module of {type(model).__name__}; "
                         f"valid names include: {_suggest(model)}")
    return modules[name]


def _suggest(model: nn.Module, limit: int = 8) -> str:
    """A few dotted names worth trying: the last conv layers (Grad-CAM's usual choice)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    names = convs or [n for n, _ in model.named_modules() if n]
    names = names[-limit:]
    return ", ".join(names) if names else "(the model has no submodules)"


# ---- the maps ------------------------------------------------------------------------------------
class _LogitAsColumn(nn.Module):
    """(B,) logits -> (B, 1) scores: the shape pytorch_grad_cam's targets index into."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if logits.dim() == 1:
            return logits.unsqueeze(1)
        if logits.dim() == 2 and logits.shape[1] == 1:
            return logits
        raise ValueError(f"Grad-CAM expects one logit per image, got output of shape {tuple(logits.shape)}")


class _ClassEvidence:
    """Target for one image: its logit as evidence of PNEUMONIA, the negated logit for NORMAL.

    ``label=None`` explains whichever class the model predicts (logit >= 0 means pneumonia),
    decided from the very forward pass being explained, so no second pass is needed.
    """

    def __init__(self, label: int | None) -> None:
        self.label = label

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        logit = output[0]  # pytorch_grad_cam hands one sample's (1,) scores
        label = self.label if self.label is not None else int(logit.item() >= 0)
        return logit if label == 1 else -logit


def _label_for(explain: str) -> int | None:
    if explain not in EXPLAIN_CHOICES:
        raise ValueError(f"explain={explain!r}; choose one of {', '.join(EXPLAIN_CHOICES)}")
    return {"predicted": None, "pneumonia": 1, "normal": 0}[explain]


def gradcam_maps(model: nn.Module, inputs: torch.Tensor, target_layer: nn.Module,
                 explain: str = "predicted") -> np.ndarray:
    """Grad-CAM maps (B, H, W), float32 in [0, 1], at the resolution of ``inputs``.

    ``inputs`` is the model's float input (as ``PneumoniaClassifier.preprocess`` makes it; either
    memory format). ``explain`` picks the class whose evidence is shown: ``predicted`` (per image),
    ``pneumonia`` or ``normal``. Each map is min-max scaled on its own, so maps show *where* the
    evidence lies, not how strong it is. A map with no positive evidence is all zeros (with a
    RuntimeWarning); so is one where the gradient vanished, which happens in the baseline when an
    overconfident model saturates its tanh layer (the float32 gradient becomes exactly 0), and
    where a model encodes a class by the *absence* of features (Grad-CAM keeps positive evidence
    only). The map is of ``target_layer``'s own output: for the baseline's conv, before its ReLU.

    The model runs in eval mode (dropout off, batch norm on running statistics, so images do not
    influence each other's maps). Its training flags, parameter gradients and ``requires_grad``
    flags are restored afterwards: the caller's model is left exactly as it was.
    """
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be (B, C, H, W), got shape {tuple(inputs.shape)}")
    label = _label_for(explain)
    if len(inputs) == 0:
        return np.zeros((0, *inputs.shape[-2:]), np.float32)
    if not any(m is target_layer for m in model.modules()):
        raise ValueError("target_layer is not a module of the model (see resolve_target_layer)")

    params = list(model.parameters())
    saved_grads = [p.grad for p in params]
    saved_requires = [p.requires_grad for p in params]
    saved_modes = [(m, m.training) for m in model.modules()]
    cam: GradCAM | None = None
    clone_handle = None
    try:
        # Only the gradient at the target layer is needed. Freezing the parameters keeps the
        # backward pass from writing (or wiping) any .grad; the input carries the graph instead.
        for p in params:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            x = inputs.detach().clone().requires_grad_(True)  # clone: also undoes inference tensors
            cam = GradCAM(model=_LogitAsColumn(model), target_layers=[target_layer])  # sets eval()
            # The library keeps the layer's output as the activation (on CPU, without copying).
            # Hand the rest of the network a copy, so an in-place op after the layer (the
            # baseline's ReLU(inplace=True)) cannot rewrite the saved activation on some devices
            # but not on others. Registered after the library's hooks, so it runs after them.
            clone_handle = target_layer.register_forward_hook(lambda module, args, output: output.clone())
            maps = cam(input_tensor=x, targets=[_ClassEvidence(label)] * len(x))
    finally:
        # Not `with GradCAM(...)`: its __exit__ swallows IndexError and would return None.
        if clone_handle is not None:
            clone_handle.remove()
        if cam is not None:
            cam.activations_and_grads.release()
            cam.outputs = None  # drop the retained graph now, not at garbage collection
        for p, grad, requires in zip(params, saved_grads, saved_requires):
            p.requires_grad_(requires)
            p.grad = grad
        for module, training in saved_modes:
            module.training = training
    maps = np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)
    empty = int((maps.reshape(len(maps), -1).max(axis=1) == 0).sum())
    if empty:  # an empty overlay looks like "no evidence" to a reader; say why it may be blank
        warnings.warn(f"{empty} of {len(maps)} Grad-CAM maps are empty: no positive evidence for the "
                      f"explained class at this layer, or the gradient vanished there (e.g. a saturated "
                      f"tanh in a very confident model)", RuntimeWarning, stacklevel=2)
    return maps


# ---- the figure ----------------------------------------------------------------------------------
def _to_gray(images: np.ndarray) -> np.ndarray:
    """(N, H, W), (N, 1, H, W) or (N, 3, H, W) -> (N, H, W): X-rays are shown in gray."""
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        return imgs
    if imgs.ndim == 4 and imgs.shape[1] == 1:
        return imgs[:, 0]
    if imgs.ndim == 4 and imgs.shape[1] == 3:
        return imgs.astype(np.float32).mean(axis=1)  # identical channels for gray X-rays
    raise ValueError(f"images must be (N, H, W), (N, 1, H, W) or (N, 3, H, W); got shape {imgs.shape}")


def save_overlays(images: np.ndarray, maps: np.ndarray, titles: list[str], path: str | Path,
                  alpha: float = 0.4, ncols: int = 4) -> Path:
    """A PNG grid: each image in gray with its Grad-CAM map over it (jet, semi-transparent), titled.

    Maps at another resolution than their images are resized to them, so maps from a model that
    saw a downscaled image still line up. The figure is closed, so long runs do not leak memory.
    """
    vmax = 255 if np.issubdtype(np.asarray(images).dtype, np.integer) else 1.0
    gray = _to_gray(images)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or len(maps) != len(gray):
        raise ValueError(f"maps must be (N, H, W) with N={len(gray)} like images; got shape {maps.shape}")
    if len(titles) != len(gray):
        raise ValueError(f"{len(titles)} titles for {len(gray)} images")
    if len(gray) == 0:
        raise ValueError("no images to draw")

    n = len(gray)
    cols = max(1, min(ncols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.3 * rows), squeeze=False)
    try:
        for ax in axes.flat:
            ax.axis("off")
        for ax, image, heat, title in zip(axes.flat, gray, maps, titles):
            height, width = image.shape
            if heat.shape != image.shape:
                heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
            ax.imshow(image, cmap="gray", vmin=0, vmax=vmax)
            ax.imshow(heat, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


__all__ = ["EXPLAIN_CHOICES", "gradcam_maps", "resolve_target_layer", "save_overlays"]


def images_of(dataset: Any, indices: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) images of a data set at `indices`, as the model saw them before preprocessing."""
    if not len(indices):
        return np.zeros((0, 1, 1, 1), np.uint8)
    return np.stack([dataset[int(i)][0].numpy() for i in indices])


def write_gradcam(module: nn.Module, target_layer: str | None, images: np.ndarray, titles: list[str],
                  path: Path) -> None:
    """Grad-CAM overlays of `images` (uint8 (N, C, H, W)) for a pneumo LightningModule, saved to `path`.

    `target_layer` is a dotted module name, or None for the model's own choice. Nothing is written
    when `images` is empty.
    """
    if not len(images):
        return
    inputs = module.preprocess(torch.from_numpy(images).to(module.device), train=False)
    maps = gradcam_maps(module.model, inputs, resolve_target_layer(module.model, target_layer))
    save_overlays(images, maps, titles, path)
