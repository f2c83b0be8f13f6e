"""Import the seed's trained Keras model into a checkpoint that `evaluate.py ckpt=...` accepts.

    python -m pneumo.keras_import MODEL.h5 OUT.ckpt [--image-size 128] [--data chest_xray|synthetic]
                                  [KEY=VALUE ...]

Reads the weights with h5py only (no TensorFlow or Keras needed). The Keras model is the seed's:

    Sequential([data_augmentation, Conv2D(32, 3, 'same', relu), MaxPooling2D(), Conv2D(64, ...),
                MaxPooling2D(), Conv2D(128, ...), MaxPooling2D(), Flatten(), Dense(128, tanh),
                Dropout(0.3), Dense(1, sigmoid)])

Supported files:
- HDF5 written by Keras 2 / tf.keras: a full model from
  `model.save("x.h5")` (weights under the `model_weights` group, architecture in the `model_config`
  attribute) or a weights-only file from `model.save_weights("x.h5")` (weights at the root). Layer order
  comes from the `layer_names` attribute, each layer's weights from its `weight_names` attribute
  (`conv2d/kernel:0`, `conv2d/bias:0`, ...). Attributes split by Keras into `layer_names0`, `layer_names1`,
  ... are joined.
- The same legacy HDF5 layout written by Keras 3 (`model.save("x.h5")`, `model.save_weights` to a legacy
  `.h5`): weight names such as `sequential/conv2d/kernel`, plus a `top_level_model_weights` group.
- Keras 3's native weights file `x.weights.h5` (`layers/<layer>/vars/0` = kernel, `vars/1` = bias) and the
  `.keras` archive (a zip holding `config.json` and `model.weights.h5`).

Layers without weights (augmentation, pooling, flatten, dropout) are skipped; integer-typed variables (the
random generators' state of augmentation layers) are ignored. When the file carries the architecture
(`model_config`, or `config.json` in a `.keras` archive) it is checked too: 'same' padding, stride 1,
ReLU convs, 2x2 pools, tanh then sigmoid (or linear) dense layers, channels_last, and no layer the seed
does not have (a Rescaling layer, for instance, would change what the model expects as input). A
weights-only file cannot be checked that far: those parts are assumed to be the seed's.

Mapping: Conv2D kernel (kh, kw, in, out) -> Conv2d weight (out, in, kh, kw); Dense kernel (in, out) ->
Linear weight (out, in). Keras flattens the (H, W, C) feature map in HWC order, PyTorch's Flatten the
(C, H, W) map in CHW order, so the first dense layer's input dimension is permuted accordingly.
The weights are otherwise the same: Keras applies the sigmoid in its last layer, SeedCNN returns the
logit and evaluation applies the sigmoid, so the probabilities agree.

Inputs: the seed fed 3-channel RGB images in [0, 1] at 128x128. The data pipeline here caches one channel
and expands it to three on the device, which is the same input for grayscale X-rays, and scales to [0, 1]
without normalisation (model.mean/std are null), so the imported model runs unchanged.

The checkpoint holds the state dict (`model.` + SeedCNN keys), and under `pneumo` a full resolved train
config (model=baseline, the chosen data config, composed from conf/ with Hydra's compose API), a fixed
threshold of 0.5 (the seed's), no MLflow run, and the source file. It has no optimiser or loop state: it
is for evaluate.py, not for `train.py resume=`.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from pneumo.config import CONFIG_DIR

if TYPE_CHECKING:
    import torch

DEFAULT_IMAGE_SIZE = 128     # the seed's input size, used when the file does not say
FIXED_THRESHOLD = {"policy": "fixed", "value": 0.5}
SEED_ARCHITECTURE = ("Conv2D(32, 3x3) -> Conv2D(64, 3x3) -> Conv2D(128, 3x3) on 3-channel input, each "
                     "followed by a 2x2 max-pool; Flatten; Dense(128); Dense(1)")
# Keras layer classes of the seed's model, and those that do nothing at inference (augmentation).
_SEED_CLASSES = {"InputLayer", "Conv2D", "Convolution2D", "MaxPooling2D", "MaxPool2D", "Flatten", "Dense",
                 "Dropout"}
_INFERENCE_NO_OPS = {"Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout"}


class KerasImportError(ValueError):
    """A file that cannot be imported; the message names the file, what was found and what was expected."""


@dataclass
class KerasLayer:
    """One layer with a kernel and a bias, as stored in the file."""
    name: str
    kernel: np.ndarray
    bias: np.ndarray

    @property
    def kind(self) -> str:
        return "Conv2D" if self.kernel.ndim == 4 else "Dense"

    def describe(self) -> str:
        return f"{self.kind} '{self.name}' kernel {tuple(self.kernel.shape)} bias {tuple(self.bias.shape)}"


@dataclass
class KerasWeights:
    """What a Keras file holds: the weighted layers in order, and the architecture if it was saved."""
    path: Path
    layout: str
    layers: list[KerasLayer]
    config: dict[str, Any] | None = None
    keras_version: str | None = None
    notes: list[str] = field(default_factory=list)


# ---- reading the file ------------------------------------------------------------------------------

def read_keras_weights(path: str | Path) -> KerasWeights:
    """The conv and dense layers of a Keras .h5 / .weights.h5 / .keras file, in model order."""
    import h5py

    path = Path(path).expanduser()
    if path.is_dir():
        raise KerasImportError(f"{path} is a directory (a TensorFlow SavedModel?): save the Keras model as "
                               f"HDF5 with model.save('model.h5') and import that file")
    if not path.is_file():
        raise KerasImportError(f"{path} does not exist: pass the Keras model file (.h5, .weights.h5 or .keras)")
    if zipfile.is_zipfile(path):
        return _read_keras_archive(path)
    if not h5py.is_hdf5(path):
        raise KerasImportError(f"{path} is not an HDF5 file (nor a .keras archive): pass the file written by "
                               f"Keras' model.save('model.h5') or model.save_weights(...)")
    try:
        with h5py.File(path, "r") as h5:
            return _read_h5(h5, path, config=None, layout_prefix="")
    except KerasImportError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise KerasImportError(f"{path}: HDF5 file could not be read as Keras weights "
                               f"({type(error).__name__}: {error})") from error


def _read_keras_archive(path: Path) -> KerasWeights:
    import h5py

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "model.weights.h5" not in names:
                raise KerasImportError(f"{path} is a zip archive without model.weights.h5 (found {names[:8]}): "
                                       f"not a .keras model file")
            config = json.loads(archive.read("config.json")) if "config.json" in names else None
            metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
            weights = io.BytesIO(archive.read("model.weights.h5"))
        with h5py.File(weights, "r") as h5:
            found = _read_h5(h5, path, config=config, layout_prefix=".keras archive: ")
        found.keras_version = found.keras_version or metadata.get("keras_version")
        return found
    except KerasImportError:
        raise
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as error:
        raise KerasImportError(f"{path}: .keras archive could not be read ({type(error).__name__}: {error})") \
            from error


def _read_h5(h5: Any, path: Path, config: dict[str, Any] | None, layout_prefix: str) -> KerasWeights:
    if config is None and "model_config" in h5.attrs:
        config = json.loads(_text(h5.attrs["model_config"]))
    version = _text(h5.attrs["keras_version"]) if "keras_version" in h5.attrs else None
    if "model_weights" in h5 and _has_attr(h5["model_weights"], "layer_names"):
        group, layout = h5["model_weights"], "full model (model_weights group, layer_names/weight_names)"
    elif _has_attr(h5, "layer_names"):
        group, layout = h5, "weights only (layer_names/weight_names at the root)"
    elif "layers" in h5 and hasattr(h5["layers"], "keys"):
        order = _config_layer_names(config) if config else None
        layers = _native_layers(h5["layers"], path, order)
        return KerasWeights(path, layout_prefix + "Keras 3 native weights (layers/<name>/vars/<i>)", layers,
                            config, version or _config_version(config))
    else:
        raise KerasImportError(f"{path}: no Keras weights found (top-level entries {sorted(h5.keys())[:10]}, "
                               f"attributes {sorted(h5.attrs.keys())[:10]}): expected the layout of Keras' "
                               f"model.save('x.h5') / save_weights (a 'layer_names' attribute) or a Keras 3 "
                               f".weights.h5 ('layers' group)")
    version = version or (_text(group.attrs["keras_version"]) if "keras_version" in group.attrs else None)
    layers: list[KerasLayer] = []
    for name in _load_attr(group, "layer_names"):
        if name not in group:
            raise KerasImportError(f"{path}: layer '{name}' is listed in layer_names but has no group")
        layer = group[name]
        weights = []
        for weight_name in _load_attr(layer, "weight_names"):
            if weight_name not in layer:
                raise KerasImportError(f"{path}: weight '{weight_name}' of layer '{name}' is listed in "
                                       f"weight_names but missing from the file")
            weights.append((weight_name, np.asarray(layer[weight_name][()])))
        found = _kernel_and_bias(name, weights, path)
        if found is not None:
            layers.append(found)
    return KerasWeights(path, layout_prefix + layout, layers, config, version)


def _native_layers(group: Any, path: Path, order: list[str] | None) -> list[KerasLayer]:
    """Keras 3's `layers/<name>/vars/<i>`: in the config's layer order, else by name (conv2d, conv2d_1, ...)."""
    names = list(group.keys())
    if order:
        rank = {name: i for i, name in enumerate(order)}
        names.sort(key=lambda n: (rank.get(n, len(rank)), _natural_key(n)))
    else:
        names.sort(key=_natural_key)
    layers = []
    for name in names:
        weights: list[tuple[str, np.ndarray]] = []
        _collect_datasets(group[name], f"{name}", weights)
        found = _kernel_and_bias(name, weights, path)
        if found is not None:
            layers.append(found)
    return layers


def _collect_datasets(node: Any, prefix: str, out: list[tuple[str, np.ndarray]]) -> None:
    """Every dataset under a layer's group: its own vars in index order, then nested objects."""
    import h5py

    keys = sorted(node.keys(), key=lambda k: (0 if k == "vars" else 1, _natural_key(k)))
    for key in keys:
        item = node[key]
        if isinstance(item, h5py.Dataset):
            out.append((f"{prefix}/{key}", np.asarray(item[()])))
        else:
            _collect_datasets(item, f"{prefix}/{key}", out)


def _kernel_and_bias(layer: str, weights: list[tuple[str, np.ndarray]], path: Path) -> KerasLayer | None:
    """A conv/dense layer's (kernel, bias); None for a layer without float weights (augmentation, pooling)."""
    floats = [(n, w) for n, w in weights if np.issubdtype(w.dtype, np.floating)]  # ints: RNG state
    if not floats:
        return None
    kernels = [w for _, w in floats if w.ndim in (2, 4)]
    biases = [w for _, w in floats if w.ndim == 1]
    if len(floats) != 2 or len(kernels) != 1 or len(biases) != 1:
        found = ", ".join(f"{n} {tuple(w.shape)}" for n, w in floats)
        raise KerasImportError(f"{path}: layer '{layer}' holds weights [{found}], which is not a Conv2D or Dense "
                               f"layer with a bias; the seed's model has only those ({SEED_ARCHITECTURE})")
    return KerasLayer(layer, kernels[0].astype(np.float32), biases[0].astype(np.float32))


def _has_attr(node: Any, name: str) -> bool:
    return name in node.attrs or f"{name}0" in node.attrs


def _load_attr(node: Any, name: str) -> list[str]:
    """A list-of-strings attribute, joined when Keras split it into name0, name1, ... (HDF5 header limit)."""
    if name in node.attrs:
        values = list(np.atleast_1d(node.attrs[name]))
    else:
        values, index = [], 0
        while f"{name}{index}" in node.attrs:
            values += list(np.atleast_1d(node.attrs[f"{name}{index}"]))
            index += 1
    return [_text(v) for v in values]


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _natural_key(name: str) -> tuple[str, int]:
    """conv2d < conv2d_1 < conv2d_2 < conv2d_10 (Keras' automatic names)."""
    match = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
    return (match.group(1), int(match.group(2)) if match.group(2) else 0) if match else (name, 0)


# ---- the architecture, when the file carries it ----------------------------------------------------

def _config_layers(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Top-level layer entries of a (Sequential or Functional) model config, Keras 1, 2 or 3."""
    inner = config.get("config", config)
    layers = inner.get("layers", []) if isinstance(inner, dict) else inner
    return [entry for entry in layers if isinstance(entry, dict)]


def _config_layer_names(config: dict[str, Any]) -> list[str]:
    return [str((entry.get("config") or {}).get("name", "")) for entry in _config_layers(config)]


def _config_version(config: dict[str, Any] | None) -> str | None:
    return None if not config else config.get("keras_version")


def _activation(value: Any) -> str:
    if isinstance(value, dict):  # serialised as an object
        value = (value.get("config") or {}).get("name") or value.get("class_name")
    return str(value).lower()


def _pair(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _input_shape(config: dict[str, Any]) -> tuple | None:
    """The (H, W, C) the model was built for: an InputLayer's or the first layer's declared batch shape."""
    stack = [config]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            for key in ("batch_input_shape", "batch_shape"):
                shape = node.get(key)
                if isinstance(shape, (list, tuple)) and len(shape) == 4:
                    return tuple(shape[1:])
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(node)
    return None


def check_config(weights: KerasWeights) -> dict[str, Any]:
    """Check the saved architecture against the seed's; returns what the port uses (input shape, dropout)."""
    config, path = weights.config, weights.path
    if not config:
        weights.notes.append("no model config in the file: padding, activations and pooling are assumed to be "
                             "the seed's ('same', ReLU, 2x2 max-pool, tanh, sigmoid)")
        return {}
    problems: list[str] = []
    found: dict[str, Any] = {"input_shape": _input_shape(config)}
    dense_activations, pools = [], 0
    for entry in _config_layers(config):
        kind, layer = entry.get("class_name", "?"), entry.get("config") or {}
        name = layer.get("name", "?")
        if kind in ("Sequential", "Functional", "Model"):
            others = [e.get("class_name") for e in _config_layers(entry)
                      if not str(e.get("class_name", "")).startswith("Random") and e.get("class_name") != "InputLayer"]
            if others:
                problems.append(f"nested model '{name}' holds {others}: only augmentation (Random*) layers "
                                f"are expected there")
            continue
        if kind.startswith("Random") or kind in _INFERENCE_NO_OPS:
            if kind in ("Dropout",):
                found["dropout"] = float(layer.get("rate", 0.3))
            continue
        if kind not in _SEED_CLASSES:
            problems.append(f"layer '{name}' is a {kind}, which the seed's model does not have")
            continue
        if layer.get("data_format") not in (None, "channels_last"):
            problems.append(f"layer '{name}' uses data_format={layer.get('data_format')} (expected channels_last)")
        if kind in ("Conv2D", "Convolution2D"):
            if str(layer.get("padding", "same")).lower() != "same":
                problems.append(f"Conv2D '{name}' has padding='{layer.get('padding')}' (expected 'same')")
            if _pair(layer.get("strides", 1)) != (1, 1):
                problems.append(f"Conv2D '{name}' has strides={layer.get('strides')} (expected 1)")
            if _pair(layer.get("dilation_rate", 1)) != (1, 1):
                problems.append(f"Conv2D '{name}' has dilation_rate={layer.get('dilation_rate')} (expected 1)")
            if int(layer.get("groups") or 1) != 1:
                problems.append(f"Conv2D '{name}' has groups={layer.get('groups')} (expected 1)")
            if _activation(layer.get("activation", "relu")) != "relu":
                problems.append(f"Conv2D '{name}' has activation={_activation(layer.get('activation'))} "
                                f"(expected relu)")
        elif kind in ("MaxPooling2D", "MaxPool2D"):
            pools += 1
            pool = _pair(layer.get("pool_size", 2))
            strides = _pair(layer.get("strides")) if layer.get("strides") is not None else pool
            if pool != (2, 2) or strides != (2, 2):
                problems.append(f"MaxPooling2D '{name}' has pool_size={pool}, strides={strides} (expected 2x2)")
        elif kind == "Dense":
            dense_activations.append((name, _activation(layer.get("activation", "linear"))))
    if pools != 3:
        problems.append(f"{pools} MaxPooling2D layers (expected 3)")
    expected = [("tanh",), ("sigmoid", "linear")]
    if len(dense_activations) == 2:
        for (name, activation), allowed in zip(dense_activations, expected):
            if activation not in allowed:
                problems.append(f"Dense '{name}' has activation={activation} (expected {' or '.join(allowed)})")
    if problems:
        raise KerasImportError(f"{path}: the saved architecture differs from the seed's ({SEED_ARCHITECTURE}): "
                               + "; ".join(problems))
    if len(dense_activations) == 2 and dense_activations[1][1] == "linear":
        weights.notes.append("the last Dense layer is linear (the Keras model outputs logits): SeedCNN also "
                             "returns the logit, evaluation applies the sigmoid")
    return found


# ---- the mapping -----------------------------------------------------------------------------------

def dense_hwc_to_chw(kernel: np.ndarray, channels: int, side: int) -> np.ndarray:
    """A Keras Dense kernel (H*W*C, out) that follows Flatten, as a PyTorch Linear weight (out, C*H*W).

    Keras flattens (H, W, C) with index h*W*C + w*C + c, PyTorch flattens (C, H, W) with index
    c*H*W + h*W + w: weight[o, c, h, w] = kernel[h, w, c, o].
    """
    out = kernel.shape[1]
    return kernel.reshape(side, side, channels, out).transpose(3, 2, 0, 1).reshape(out, channels * side * side)


def keras_to_state_dict(weights: KerasWeights, model: torch.nn.Module, image_size: int) -> dict[str, torch.Tensor]:
    """SeedCNN's state dict from the Keras layers, after checking every shape against the model's own."""
    import torch

    path = weights.path
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    denses = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    names = {id(m): n for n, m in model.named_modules()}
    keras_convs = [layer for layer in weights.layers if layer.kind == "Conv2D"]
    keras_denses = [layer for layer in weights.layers if layer.kind == "Dense"]
    expected = [f"Conv2D kernel {tuple(c.weight.permute(2, 3, 1, 0).shape)}" for c in convs] + \
               [f"Dense kernel {tuple(d.weight.T.shape)}" for d in denses]
    found = "; ".join(layer.describe() for layer in weights.layers) or "no Conv2D or Dense weights"
    mismatch = (f"{path}: not the seed's architecture at --image-size {image_size}: expected "
                f"{len(convs)} Conv2D and {len(denses)} Dense layers ({'; '.join(expected)}), found {found}")
    if len(keras_convs) != len(convs) or len(keras_denses) != len(denses):
        raise KerasImportError(mismatch)

    state: dict[str, torch.Tensor] = {}
    for layer, conv in zip(keras_convs, convs):
        weight = layer.kernel.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        if weight.shape != tuple(conv.weight.shape) or layer.bias.shape != tuple(conv.bias.shape):
            raise KerasImportError(mismatch)
        state[f"{names[id(conv)]}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"{names[id(conv)]}.bias"] = torch.from_numpy(layer.bias.copy())

    channels = convs[-1].out_channels
    side = image_size // 2 ** len(convs)
    first, last = keras_denses
    if first.kernel.shape != (channels * side * side, denses[0].out_features):
        inputs = first.kernel.shape[0]
        hint = ""
        if inputs % channels == 0 and round((inputs // channels) ** 0.5) ** 2 == inputs // channels:
            built = round((inputs // channels) ** 0.5) * 2 ** len(convs)
            hint = (f" (the first Dense layer takes {inputs} = {channels} x {built // 2 ** len(convs)}^2 inputs: "
                    f"a model for {built}x{built} images; pass --image-size {built})")
        raise KerasImportError(mismatch + hint)
    if first.bias.shape != (denses[0].out_features,) or last.kernel.shape != tuple(denses[1].weight.T.shape) \
            or last.bias.shape != tuple(denses[1].bias.shape):
        raise KerasImportError(mismatch)
    state[f"{names[id(denses[0])]}.weight"] = torch.from_numpy(
        np.ascontiguousarray(dense_hwc_to_chw(first.kernel, channels, side)))
    state[f"{names[id(denses[0])]}.bias"] = torch.from_numpy(first.bias.copy())
    state[f"{names[id(denses[1])]}.weight"] = torch.from_numpy(np.ascontiguousarray(last.kernel.T))
    state[f"{names[id(denses[1])]}.bias"] = torch.from_numpy(last.bias.copy())
    return state


# ---- the train config the checkpoint carries -------------------------------------------------------

def data_options() -> list[str]:
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

def import_keras(model_path: str | Path, out_path: str | Path, image_size: int | None = None,
                 data: str = "chest_xray", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read the Keras file, map its weights, write OUT.ckpt; returns a summary of what was done."""
    model_path, out_path = Path(model_path).expanduser(), Path(out_path).expanduser()
    weights = read_keras_weights(model_path)
    saved = check_config(weights)
    declared = saved.get("input_shape")
    if declared is not None and (declared[0] != declared[1] or declared[2] not in (3, None)):
        raise KerasImportError(f"{model_path}: the Keras model takes inputs of shape {declared}; the seed's "
                               f"takes square 3-channel (RGB) images")
    if image_size is None:
        image_size = int(declared[0]) if declared is not None and declared[0] else DEFAULT_IMAGE_SIZE
    elif declared is not None and declared[0] and int(declared[0]) != image_size:
        weights.notes.append(f"the Keras model was built for {declared[0]}x{declared[1]} inputs; importing at "
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

    from pneumo.checkpoints import load_weights
    from pneumo.factory import build_module

    extra = list(overrides)
    if "dropout" in saved and not any(o.startswith("model.net.dropout=") for o in extra):
        extra.insert(0, f"model.net.dropout={saved['dropout']}")
    try:
        config = compose_train_config(data, image_size, out_path.parent, extra)
    except Exception as error:  # Hydra's override and composition errors: the message says what is wrong
        raise KerasImportError(f"composing the train config for {model_path} failed: "
                               f"{type(error).__name__}: {error}") from error
    module = build_module(OmegaConf.create(config), train=False)
    state = keras_to_state_dict(weights, module.model, image_size)
    module.model.load_state_dict(state, strict=True)
    state_dict = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    checkpoint = {"state_dict": state_dict,
                  "pneumo": {"config": config, "threshold": dict(FIXED_THRESHOLD), "mlflow": None,
                             "source": {"keras_h5": str(model_path.resolve()), "layout": weights.layout,
                                        "keras_version": weights.keras_version}}}
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
    return {"checkpoint": out_path, "layout": weights.layout, "keras_version": weights.keras_version,
            "image_size": image_size, "data": data, "notes": weights.notes,
            "parameters": sum(v.numel() for v in state_dict.values()),
            "layers": [layer.describe() for layer in weights.layers]}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.keras_import",
        description="Import the seed's trained Keras CNN (.h5, .weights.h5 or .keras; read with h5py, no "
                    "TensorFlow) into a checkpoint for `python evaluate.py ckpt=OUT.ckpt`.")
    parser.add_argument("model", help="the Keras file: model.save('x.h5'), save_weights('x.h5'), "
                                      "x.weights.h5 or x.keras")
    parser.add_argument("out", help="the checkpoint to write, e.g. keras.ckpt")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side the model was trained at (default: the model config's input shape, "
                             f"else {DEFAULT_IMAGE_SIZE}, the seed's)")
    parser.add_argument("--data", default="chest_xray",
                        help=f"data config stored with the checkpoint ({' | '.join(data_options())}; default "
                             f"chest_xray); evaluate.py data=... can still choose another")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="further train-config overrides stored with the checkpoint, e.g. data.root=/path")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = _parser().parse_args(None if argv is None else list(argv))
    try:
        summary = import_keras(args.model, args.out, args.image_size, args.data, args.overrides)
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
