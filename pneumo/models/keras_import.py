"""Import the seed's trained Keras model into a checkpoint that `evaluate.py ckpt=...` accepts.

    python -m pneumo.models.keras_import MODEL OUT.ckpt [--image-size 128] [--data chest_xray|synthetic]
                                         [--config ARCHITECTURE] [KEY=VALUE ...]

MODEL is any file Keras 2 or 3 writes for the seed's CNN: a full model `.h5` (`model.save("x.h5")`), a
weights `.h5` (Keras 2 `model.save_weights("x.h5")`), a `.weights.h5` (`model.save_weights`, Keras 2.12+
and 3) or a `.keras` archive; Sequential or Functional, layers under any names, the augmentation block
nested or not. It is read with h5py (no TensorFlow or Keras needed) by `keras_files`, its architecture is
checked against the seed's by `keras_architecture` (the first difference is named), and the weights are
found as Keras finds them by `keras_matching` (by class and position for .keras / .weights.h5, by order of
the layers with weights for legacy .h5). A weights-only file carries no architecture: the seed's Sequential
is assumed, or `--config` gives it (model.to_json(), a config.json, or a .keras / full .h5 to take it from).

Mapping: Conv2D kernel (kh, kw, in, out) -> Conv2d weight (out, in, kh, kw); Dense kernel (in, out) ->
Linear weight (out, in). Keras flattens the (H, W, C) feature map in HWC order, PyTorch's Flatten the
(C, H, W) map in CHW order, so the first dense layer's input dimension is permuted accordingly.
Keras applies the sigmoid in its last layer, SeedCNN returns the logit and evaluation applies the sigmoid,
so the probabilities agree.

Inputs: the seed fed 3-channel RGB images in [0, 1]. The data pipeline here caches one channel and expands
it to three on the device, which is the same input for grayscale X-rays, and scales to [0, 1] without
normalisation (model.mean/std are null), so the imported model runs unchanged.

The checkpoint holds the state dict (`model.` + SeedCNN keys), and under `pneumo` a full resolved train
config (model=baseline, the chosen data config, composed from conf/ with Hydra's compose API), a fixed
threshold of 0.5 (the seed's), no MLflow run, and the source file. It has no optimiser or loop state: it
is for evaluate.py, not for `train.py resume=`.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumo.config import CONFIG_DIR
from pneumo.models.keras_architecture import check_seed, default_seed_config, input_shape, parse_model
from pneumo.models.keras_files import KerasImportError, read_config_file, read_keras_file
from pneumo.models.keras_matching import MatchedLayer, match_weights

if TYPE_CHECKING:
    import torch

__all__ = ["KerasImportError", "dense_hwc_to_chw", "import_keras", "keras_to_state_dict", "main"]

DEFAULT_IMAGE_SIZE = 128     # the seed's input size, used when the file does not say
FIXED_THRESHOLD = {"policy": "fixed", "value": 0.5}


# ---- the mapping -----------------------------------------------------------------------------------

def dense_hwc_to_chw(kernel: np.ndarray, channels: int, side: int) -> np.ndarray:
    """A Keras Dense kernel (H*W*C, out) that follows Flatten, as a PyTorch Linear weight (out, C*H*W).

    Keras flattens (H, W, C) with index h*W*C + w*C + c, PyTorch flattens (C, H, W) with index
    c*H*W + h*W + w: weight[o, c, h, w] = kernel[h, w, c, o]. Same dtype as `kernel`.
    """
    out = kernel.shape[1]
    return kernel.reshape(side, side, channels, out).transpose(3, 2, 0, 1).reshape(out, channels * side * side)


def keras_to_state_dict(matched: list[MatchedLayer], model: torch.nn.Module, image_size: int,
                        path: Path) -> dict[str, torch.Tensor]:
    """SeedCNN's state dict (float32 tensors) from the matched Keras layers (3 Conv2D then 2 Dense, as
    `keras_matching.match_weights` returns them).

    Every shape is checked against the model's own at `image_size`; KerasImportError names the first
    kernel or bias that differs, where it is stored, and for the first Dense layer the image size it fits.
    """
    import torch

    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    denses = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    names = {id(m): n for n, m in model.named_modules()}
    channels, side = convs[-1].out_channels, image_size // 2 ** len(convs)
    targets = convs + denses
    assert len(matched) == len(targets), "check_seed guarantees 3 Conv2D and 2 Dense layers"
    state: dict[str, torch.Tensor] = {}
    for index, (found, module) in enumerate(zip(matched, targets)):
        if isinstance(module, torch.nn.Conv2d):
            kernel_shape = tuple(module.weight.permute(2, 3, 1, 0).shape)
        else:
            kernel_shape = (module.in_features, module.out_features)
        for what, array, wanted in (("kernel", found.kernel, kernel_shape), ("bias", found.bias, (module.out_channels
                                    if isinstance(module, torch.nn.Conv2d) else module.out_features,))):
            if tuple(array.shape) != wanted:
                hint = _size_hint(array, channels, len(convs)) if index == len(convs) and what == "kernel" else ""
                raise KerasImportError(
                    f"{path}: a {what} of shape {tuple(array.shape)} in {found.where} ({found.layer.describe()}, "
                    f"a {found.layer.kind}) where the seed's model at --image-size {image_size} has {wanted}{hint}")
        kernel, bias = found.kernel.astype(np.float32), found.bias.astype(np.float32)
        if isinstance(module, torch.nn.Conv2d):
            weight = kernel.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        elif module is denses[0]:
            weight = dense_hwc_to_chw(kernel, channels, side)
        else:
            weight = kernel.T
        state[f"{names[id(module)]}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"{names[id(module)]}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    return state


def _size_hint(kernel: np.ndarray, channels: int, blocks: int) -> str:
    inputs = kernel.shape[0] if kernel.ndim == 2 else 0
    if inputs and inputs % channels == 0 and round((inputs // channels) ** 0.5) ** 2 == inputs // channels:
        built = round((inputs // channels) ** 0.5) * 2 ** blocks
        return (f" (it takes {inputs} = {channels} x {built // 2 ** blocks}^2 inputs: a model for {built}x{built} "
                f"images; pass --image-size {built})")
    return ""


# ---- the train config the checkpoint carries -------------------------------------------------------

def data_options() -> list[str]:
    """The data configs `--data` accepts: the names of conf/data/*.yaml."""
    return sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))


def compose_train_config(data: str, image_size: int, output_dir: str | Path,
                         overrides: Sequence[str] = ()) -> dict[str, Any]:
    """train.yaml composed for model=baseline and the chosen data, resolved to plain values.

    `${hydra:...}` interpolations (output_dir) only resolve inside a Hydra app: output_dir is set to a
    plain path, and any other `${hydra:KEY}` is replaced by KEY's value in the composed hydra node.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton
    from omegaconf import OmegaConf, open_dict

    output_dir = str(Path(output_dir).resolve())
    all_overrides = ["model=baseline", f"data={data}", f"data.image_size={image_size}", f"output_dir={output_dir}",
                     "logger=none", "module.threshold_policy=fixed", *overrides]
    running = Singleton._instances.pop(GlobalHydra, None)  # a Hydra app's own state: put back afterwards
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="keras_import"):
            cfg = compose(config_name="train", overrides=all_overrides, return_hydra_config=True)
    finally:
        if running is not None:
            GlobalHydra.set_instance(running)
    hydra_node = cfg.hydra
    with open_dict(hydra_node):
        hydra_node.runtime.output_dir = output_dir
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra")

    def replace(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: replace(v) for k, v in value.items()}
        if isinstance(value, list):
            return [replace(v) for v in value]
        if isinstance(value, str) and "${hydra:" in value:
            return re.sub(r"\$\{hydra:([^}]*)\}", lambda m: str(OmegaConf.select(hydra_node, m.group(1))), value)
        return value

    return OmegaConf.to_container(OmegaConf.create(replace(raw)), resolve=True)


# ---- the whole import ------------------------------------------------------------------------------

@dataclass
class KerasSeed:
    """A Keras file's seed weights, found and checked, before any torch: see `read_seed_weights`."""
    path: Path
    layout: str
    keras_version: str | None
    layers: list[MatchedLayer]
    input_shape: tuple | None
    dropout: float | None
    notes: list[str] = field(default_factory=list)


def read_seed_weights(model_path: str | Path, config_path: str | Path | None = None) -> KerasSeed:
    """Read a Keras file, check its architecture against the seed's, and find the seed's weights in it.

    The architecture is the file's own (`model_config`, a .keras archive's config.json), else the one in
    `config_path` (only for files that carry none), else the seed's Sequential is assumed. Returns the five
    matched layers (arrays as stored) and the declared (H, W, C) input shape (None if unknown). Raises
    KerasImportError naming the file and the first difference.
    """
    model_path = Path(model_path).expanduser()
    file = read_keras_file(model_path)
    notes: list[str] = []
    config = file.config
    if config_path is not None:
        if config is not None:
            raise KerasImportError(f"--config {config_path}: {model_path} carries its own architecture "
                                   f"({file.layout}); --config is for weights-only files")
        config = read_config_file(config_path)
        notes.append(f"architecture from --config {config_path}")
    elif config is None:
        notes.append("no model config in the file: the seed's Sequential is assumed (its layers, padding, "
                     "activations and pooling), as Keras' load_weights needs that model built in code")
    root = parse_model(config if config is not None else default_seed_config(), model_path)
    plan = check_seed(root, model_path)
    matched = match_weights(file, root, plan)
    declared = input_shape(config) if config is not None else None
    return KerasSeed(model_path, file.layout, file.keras_version, matched, declared, plan.dropout,
                     notes + plan.notes)


def import_keras(model_path: str | Path, out_path: str | Path, image_size: int | None = None,
                 data: str = "chest_xray", overrides: Sequence[str] = (),
                 config_path: str | Path | None = None) -> dict[str, Any]:
    """Read the Keras file, map its weights, write OUT.ckpt; returns a summary of what was done.

    Raises KerasImportError (nothing written) for a file that is not the seed's model, an image size that
    does not fit its first Dense layer, an unknown --data, or an output path that is a directory or the
    input itself.
    """
    model_path, out_path = Path(model_path).expanduser(), Path(out_path).expanduser()
    seed = read_seed_weights(model_path, config_path)
    declared = seed.input_shape
    if declared is not None and (declared[0] != declared[1] or declared[2] not in (3, None)):
        raise KerasImportError(f"{model_path}: the Keras model takes inputs of shape {declared}; the seed's "
                               f"takes square 3-channel (RGB) images")
    if image_size is None:
        image_size = int(declared[0]) if declared is not None and declared[0] else DEFAULT_IMAGE_SIZE
    elif declared is not None and declared[0] and int(declared[0]) != image_size:
        seed.notes.append(f"the Keras model was built for {declared[0]}x{declared[1]} inputs; importing at "
                          f"--image-size {image_size} as asked")
    if image_size <= 0 or image_size % 8:
        raise KerasImportError(f"--image-size {image_size} must be a positive multiple of 8 (three 2x2 max-pools)")
    if data not in data_options():
        raise KerasImportError(f"--data {data}: no conf/data/{data}.yaml (choose from {', '.join(data_options())})")
    if out_path.is_dir():
        raise KerasImportError(f"{out_path} is a directory: pass the checkpoint file to write, "
                               f"e.g. {out_path / 'keras.ckpt'}")
    if out_path.resolve() == model_path.resolve():
        raise KerasImportError(f"{out_path}: the output would overwrite the Keras file")

    # Imported here, once the file has passed its checks: errors in it are reported without loading torch.
    import torch
    from omegaconf import OmegaConf

    from pneumo.models.checkpoints import load_weights
    from pneumo.models.factory import build_module

    extra = list(overrides)
    if seed.dropout is not None and not any(o.startswith("model.net.dropout=") for o in extra):
        extra.insert(0, f"model.net.dropout={seed.dropout}")
    try:
        config = compose_train_config(data, image_size, out_path.parent, extra)
    except Exception as error:  # Hydra's override and composition errors: the message says what is wrong
        raise KerasImportError(f"composing the train config for {model_path} failed: "
                               f"{type(error).__name__}: {error}") from error
    module = build_module(OmegaConf.create(config), train=False)
    state = keras_to_state_dict(seed.layers, module.model, image_size, model_path)
    module.model.load_state_dict(state, strict=True)
    state_dict = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    checkpoint = {"state_dict": state_dict,
                  "pneumo": {"config": config, "threshold": dict(FIXED_THRESHOLD), "mlflow": None,
                             "source": {"keras_h5": str(model_path.resolve()), "layout": seed.layout,
                                        "keras_version": seed.keras_version}}}
    load_weights(module, checkpoint, out_path)  # what evaluate.py does: strict, keys and shapes

    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(checkpoint, temporary)
        os.replace(temporary, out_path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return {"checkpoint": out_path, "layout": seed.layout, "keras_version": seed.keras_version,
            "image_size": image_size, "data": data, "notes": seed.notes,
            "parameters": sum(v.numel() for v in state_dict.values()),
            "layers": [layer.describe() for layer in seed.layers]}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.models.keras_import",
        description="Import the seed's trained Keras CNN (.h5, .weights.h5 or .keras; read with h5py, no "
                    "TensorFlow) into a checkpoint for `python evaluate.py ckpt=OUT.ckpt`.")
    parser.add_argument("model", help="the Keras file: model.save('x.h5'), save_weights('x.h5'), "
                                      "x.weights.h5 or x.keras (Keras 2 or 3)")
    parser.add_argument("out", help="the checkpoint to write, e.g. keras.ckpt")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side the model was trained at (default: the model config's input shape, "
                             f"else {DEFAULT_IMAGE_SIZE}, the seed's)")
    parser.add_argument("--data", default="chest_xray",
                        help=f"data config stored with the checkpoint ({' | '.join(data_options())}; default "
                             f"chest_xray); evaluate.py data=... can still choose another")
    parser.add_argument("--config", default=None, metavar="ARCHITECTURE",
                        help="for a weights-only file: the model's architecture, as model.to_json() writes it, "
                             "or a .keras / full-model .h5 to take it from (default: the seed's Sequential)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="further train-config overrides stored with the checkpoint, e.g. data.root=/path")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    """The command line: 0 once the checkpoint is written, 1 with `error: <file>: <reason>` on stderr."""
    args = _parser().parse_args(None if argv is None else list(argv))
    try:
        summary = import_keras(args.model, args.out, args.image_size, args.data, args.overrides, args.config)
    except KerasImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Imported {summary['parameters']:,} parameters from {args.model} "
          f"[{summary['layout']}{', Keras ' + summary['keras_version'] if summary['keras_version'] else ''}]")
    for line in summary["layers"]:
        print(f"  {line}")
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"Keras' last layer applies the sigmoid; SeedCNN returns the logit and evaluation applies the sigmoid "
          f"(same weights, same probabilities). Threshold: fixed 0.5.\n"
          f"Wrote {summary['checkpoint']} (image size {summary['image_size']}, data={summary['data']}). "
          f"Evaluate with:\n  python evaluate.py ckpt={summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
