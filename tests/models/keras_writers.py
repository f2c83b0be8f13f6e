"""Keras files of the seed's CNN written with h5py + zipfile + json in the layouts Keras 2 and 3 write, and an
independent NumPy forward pass of the Keras computation (NHWC, HWC flatten), for the Keras import tests.

The saving_lib layouts below spell every group path out literally (class name + per-class counter, whatever
the layer names), so they do not share the importer's path computation:
- Keras 3 (keras/src/saving/saving_lib.py): `layers/conv2d`, `layers/conv2d_1`, ...; nested models under
  `layers/sequential/layers/...`; random generator state in `<layer>/seed_generator/vars/0` (uint32 (2,)).
  `KERAS3_EXAMPLE_OBJECTS` is the object listing of a .keras archive written by Keras 3.6.0
  (shared/cases/keras3-layer-names), which `write_saving_lib_h5` reproduces.
- Keras 2.12/2.13: the same under `_layer_checkpoint_dependencies/`, where every layer with weights used two
  counter values (conv2d, conv2d_2, conv2d_4; dense, dense_2); Keras 2.14: `_layer_checkpoint_dependencies/`
  without the doubling; Keras 2.15: `layers/` like Keras 3.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np

CONVS = ("conv2d", "conv2d_1", "conv2d_2")
DENSES = ("dense", "dense_1")
AUGMENTATION = ("RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast")
ONE_BASED = {"conv2d": "conv2d_1", "conv2d_1": "conv2d_2", "conv2d_2": "conv2d_3", "dense": "dense_1",
             "dense_1": "dense_2", "max_pooling2d": "max_pooling2d_1", "max_pooling2d_1": "max_pooling2d_2",
             "max_pooling2d_2": "max_pooling2d_3", "flatten": "flatten_1", "dropout": "dropout_1"}
SEED_STATE = np.array([1337, 0], np.uint32)
KERAS3_EXAMPLE_OBJECTS = [
    "layers", "layers/conv2d", "layers/conv2d/vars", "layers/conv2d/vars/0", "layers/conv2d/vars/1",
    "layers/conv2d_1", "layers/conv2d_1/vars", "layers/conv2d_1/vars/0", "layers/conv2d_1/vars/1",
    "layers/conv2d_2", "layers/conv2d_2/vars", "layers/conv2d_2/vars/0", "layers/conv2d_2/vars/1", "layers/dense",
    "layers/dense/vars", "layers/dense/vars/0", "layers/dense/vars/1", "layers/dense_1", "layers/dense_1/vars",
    "layers/dense_1/vars/0", "layers/dense_1/vars/1", "layers/dropout", "layers/dropout/seed_generator",
    "layers/dropout/seed_generator/vars", "layers/dropout/seed_generator/vars/0", "layers/flatten",
    "layers/flatten/vars", "layers/max_pooling2d", "layers/max_pooling2d/vars", "layers/max_pooling2d_1",
    "layers/max_pooling2d_1/vars", "layers/max_pooling2d_2", "layers/max_pooling2d_2/vars", "layers/sequential",
    "layers/sequential/layers", "layers/sequential/layers/random_flip",
    "layers/sequential/layers/random_flip/seed_generator", "layers/sequential/layers/random_flip/seed_generator/vars",
    "layers/sequential/layers/random_flip/seed_generator/vars/0", "layers/sequential/layers/random_rotation",
    "layers/sequential/layers/random_rotation/seed_generator",
    "layers/sequential/layers/random_rotation/seed_generator/vars",
    "layers/sequential/layers/random_rotation/seed_generator/vars/0", "layers/sequential/layers/random_zoom",
    "layers/sequential/layers/random_zoom/seed_generator", "layers/sequential/layers/random_zoom/seed_generator/vars",
    "layers/sequential/layers/random_zoom/seed_generator/vars/0", "vars"]


def keras_weights(seed: int = 0, size: int = 128, filters: tuple[int, ...] = (32, 64, 128)) -> dict:
    """{Keras default layer name: (kernel, bias)} in Keras shapes, scaled so probabilities are spread out."""
    rng = np.random.default_rng(seed)
    weights, channels = {}, 3
    for name, width in zip(CONVS, filters):
        weights[name] = (rng.normal(0, np.sqrt(2 / (9 * channels)), (3, 3, channels, width)).astype(np.float32),
                         rng.normal(0, 0.05, width).astype(np.float32))
        channels = width
    flat = channels * (size // 8) ** 2
    weights["dense"] = (rng.normal(0, 1.5 / np.sqrt(flat), (flat, 128)).astype(np.float32),
                        rng.normal(0, 0.1, 128).astype(np.float32))
    weights["dense_1"] = (rng.normal(0, 3 / np.sqrt(128), (128, 1)).astype(np.float32),
                          rng.normal(0, 0.1, 1).astype(np.float32))
    return weights


# ---- configs ------------------------------------------------------------------------------------------

def seed_layers(size: int = 128, names: dict | None = None, padding: str = "same", filters=(32, 64, 128),
                augmentation: str | None = "nested", aug_kinds=AUGMENTATION, rescaling: float | None = None,
                aug_name: str = "data_augmentation") -> list[dict]:
    """The seed's `model.layers` as specs {kind, name, config[, layers]}; `names` renames by default name."""
    names = names or {}

    def spec(kind, name, **config):
        return {"kind": kind, "name": names.get(name, name), "config": config}

    aug = [spec(kind, _snake(kind), **({"factor": 0.15} if kind != "RandomFlip" else {"mode": "horizontal"}))
           for kind in aug_kinds]
    layers = [spec("Rescaling", "rescaling", scale=rescaling, offset=0.0)] if rescaling is not None else []
    if augmentation == "nested":
        layers.append({"kind": "Sequential", "name": aug_name, "config": {}, "layers": aug})
    elif augmentation == "flat":
        layers += aug
    conv = {"kernel_size": [3, 3], "strides": [1, 1], "padding": padding, "data_format": "channels_last",
            "dilation_rate": [1, 1], "groups": 1, "activation": "relu", "use_bias": True}
    pool = {"pool_size": [2, 2], "padding": "valid", "strides": [2, 2], "data_format": "channels_last"}
    for index, (name, width) in enumerate(zip(CONVS, filters)):
        layers += [spec("Conv2D", name, filters=width, **conv),
                   spec("MaxPooling2D", "max_pooling2d" + (f"_{index}" if index else ""), **pool)]
    layers += [spec("Flatten", "flatten", data_format="channels_last"),
               spec("Dense", "dense", units=128, activation="tanh", use_bias=True),
               spec("Dropout", "dropout", rate=0.3),
               spec("Dense", "dense_1", units=1, activation="sigmoid", use_bias=True)]
    return layers


def model_config(size: int = 128, keras3: bool = False, padding: str = "same", functional: bool = False,
                 layers: list[dict] | None = None, archive: bool = False, name: str | None = None) -> dict:
    """The model config as Keras 3 (config.json, model_config) or Keras 2 (model_config attribute, or with
    `archive` a Keras 2 .keras config.json: module/registered_name added) serialises it."""
    layers = layers if layers is not None else seed_layers(size, padding=padding)
    shape = [None, size, size, 3]
    modules = keras3 or archive

    def entry(kind, name, config, module="keras.layers"):
        dtype = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
                 "registered_name": None} if keras3 else "float32"
        found = {"class_name": kind, "config": {"name": name, "trainable": True, "dtype": dtype, **config}}
        return {"module": module, **found, "registered_name": None} if modules else found

    def input_entry(name):
        config = {"batch_shape": shape} if keras3 else {"batch_input_shape": shape, "ragged": False}
        return entry("InputLayer", name, {**config, "sparse": False})

    def serialise(spec):
        if "layers" in spec:
            inner = [input_entry(f"{spec['name']}_input")] + [serialise(s) for s in spec["layers"]]
            return entry("Sequential", spec["name"], {"layers": inner}, module="keras")
        return entry(spec["kind"], spec["name"], {k: v for k, v in spec["config"].items()})

    entries = [serialise(spec) for spec in layers]
    if not functional:
        body = [input_entry("input_layer" if keras3 else "input_1")] + entries
        top = entry("Sequential", name or "sequential", {"layers": body}, module="keras")
    else:
        input_name = "input_layer" if keras3 else "input_1"
        previous, body = input_name, [input_entry(input_name)]
        for item in entries:
            item["name"] = item["config"]["name"]
            if keras3:
                tensor = {"class_name": "__keras_tensor__",
                          "config": {"shape": shape, "dtype": "float32", "keras_history": [previous, 0, 0]}}
                item["inbound_nodes"] = [{"args": [tensor], "kwargs": {}}]
            else:
                item["inbound_nodes"] = [[[previous, 0, 0, {}]]]
            previous = item["name"]
            body.append(item)
        body[0]["name"], body[0]["inbound_nodes"] = input_name, []
        top = entry("Functional", name or ("functional" if keras3 else "model"),
                    {"layers": body, "input_layers": [[input_name, 0, 0]], "output_layers": [[previous, 0, 0]]},
                    module="keras.src.models.functional" if keras3 else "keras")
        if keras3:
            top["registered_name"] = "Functional"
    if modules:
        top["build_config"] = {"input_shape": shape}
    if not keras3:
        top.update({"keras_version": "2.13.1", "backend": "tensorflow"})
    return top


# ---- saving_lib files (.weights.h5, and inside .keras) --------------------------------------------------

def keras3_groups(weights: dict, functional: bool = False, augmentation: str | None = "nested",
                  aug_kinds=AUGMENTATION, rescaling: bool = False, container: str = "layers",
                  conv_paths=CONVS, dense_paths=DENSES, rng: bool = True) -> dict:
    """{group: arrays for <group>/vars/<i>} of the seed, with the saving_lib paths given literally.

    `rng`: Keras 3's layers keep a SeedGenerator (`seed_generator/vars/0`); Keras 2's write empty `vars`."""
    c = container
    groups: dict = {f"{c}/input_layer": []} if functional else {}
    if rescaling:
        groups[f"{c}/rescaling"] = []
    prefix = f"{c}/sequential/{c}/" if augmentation == "nested" else f"{c}/"
    state = ("/seed_generator", [SEED_STATE]) if rng else ("", [])
    if augmentation:
        groups.update({f"{prefix}{_snake(kind)}{state[0]}": list(state[1]) for kind in aug_kinds})
    pools = ("max_pooling2d", "max_pooling2d_1", "max_pooling2d_2")
    for role, path, pool in zip(CONVS, conv_paths, pools):
        groups[f"{c}/{path}"], groups[f"{c}/{pool}"] = list(weights[role]), []
    groups[f"{c}/flatten"] = []
    for role, path in zip(DENSES, dense_paths):
        groups[f"{c}/{path}"] = list(weights[role])
    groups[f"{c}/dropout{state[0]}"] = list(state[1])
    return groups


KERAS2_13_PATHS = {"conv_paths": ("conv2d", "conv2d_2", "conv2d_4"), "dense_paths": ("dense", "dense_2")}


def write_saving_lib_h5(target, groups: dict, optimizer: dict | None = None) -> None:
    """Each group gets `vars` with datasets 0, 1, ...; the root gets the model's own (empty) `vars`."""
    with h5py.File(target, "w") as h5:
        for path in sorted(groups):
            variables = h5.require_group(path).require_group("vars")
            for index, value in enumerate(groups[path]):
                variables.create_dataset(str(index), data=value)
        if optimizer is not None:
            variables = h5.create_group("optimizer").create_group("vars")
            for index, value in enumerate(optimizer):
                variables.create_dataset(str(index), data=value)
        h5.create_group("vars")


def adam_state(weights: dict) -> list[np.ndarray]:
    """What a compiled, trained model's optimizer adds: iterations, learning rate, then m and v per variable."""
    arrays = [np.array(120, np.int64), np.array(0.001, np.float32)]
    for role in CONVS + DENSES:
        arrays += [np.full_like(w, 0.01) for w in weights[role]] * 2
    return arrays


def write_keras_archive(path: Path, config: dict, groups: dict, version: str = "3.6.0",
                        optimizer: list | None = None) -> Path:
    buffer = io.BytesIO()
    write_saving_lib_h5(buffer, groups, optimizer)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": version, "date_saved": "2026-11-29@12:00:00"}))
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("model.weights.h5", buffer.getvalue())
    return path


# ---- legacy HDF5 ---------------------------------------------------------------------------------------

def write_legacy_h5(path: Path, weights: dict, full: bool = True, keras3: bool = False,
                    config: dict | None = None, extra_layers: dict | None = None, names: dict | None = None,
                    functional: bool = False, rng_state: bool = True) -> Path:
    """Keras' HDF5 layout: `layer_names` lists model.layers, per-layer groups with `weight_names`.

    Keras 2: weight names `conv2d/kernel:0` (the augmentation block may carry its generator's `StateVar`);
    Keras 3's legacy writer: the variable path `sequential/conv2d/kernel`, groups created in name order, a
    `top_level_model_weights` group, and no weights for augmentation or dropout layers.
    """
    names, extra_layers = names or {}, extra_layers or {}
    order = ["sequential"] + [n for c, p in zip(CONVS, ("max_pooling2d", "max_pooling2d_1", "max_pooling2d_2"))
                              for n in (c, p)] + ["flatten", "dense", "dropout", "dense_1"] + list(extra_layers)
    if functional:
        order.insert(0, "input_layer" if keras3 else "input_1")
    stored = {names.get(n, n): n for n in order}
    with h5py.File(path, "w") as h5:
        if full:
            h5.attrs["keras_version"] = b"3.3.3" if keras3 else b"2.13.1"
            h5.attrs["backend"] = b"tensorflow"
            h5.attrs["model_config"] = json.dumps(config or model_config(keras3=keras3)).encode()
            h5.attrs["training_config"] = json.dumps({"loss": "binary_crossentropy"}).encode()
            group = h5.create_group("model_weights")
            h5.create_group("optimizer_weights").attrs["weight_names"] = np.array([b"Adam/iter:0"])
        else:
            group = h5
        group.attrs["layer_names"] = np.array([n.encode() for n in stored])
        group.attrs["backend"] = b"tensorflow"
        group.attrs["keras_version"] = b"3.3.3" if keras3 else b"2.13.1"
        for name in (sorted(stored) if keras3 else stored):
            layer, role = group.create_group(name), stored[name]
            values = weights.get(role) or extra_layers.get(role)
            if role == "sequential" and rng_state and not keras3:
                values = (np.array([0, 42, 0], np.int64),)
                weight_names = ["random_flip/StateVar:0"]
            elif values is None:
                layer.attrs["weight_names"] = np.asarray([])  # as Keras writes it for weightless layers
                continue
            else:
                suffixes = ("kernel", "bias", "moving_mean", "moving_variance")[:len(values)]
                weight_names = [f"sequential/{name}/{s}" if keras3 else f"{name}/{s}:0" for s in suffixes]
            layer.attrs["weight_names"] = np.array([n.encode() for n in weight_names])
            for weight_name, value in zip(weight_names, values):
                layer.create_dataset(weight_name, data=value)
        if keras3 and full:
            group.create_group("top_level_model_weights").attrs["weight_names"] = np.asarray([])
    return path


def write_layout(layout: str, folder: Path, weights: dict, size: int = 128) -> Path:
    """The five layouts of the first tests: Keras 2 full / weights-only .h5, Keras 3 legacy .h5, .weights.h5,
    .keras (Keras 3 Sequential, default names)."""
    if layout == "keras2_full":
        return write_legacy_h5(folder / "model.h5", weights, config=model_config(size))
    if layout == "keras2_weights_only":
        return write_legacy_h5(folder / "weights.h5", weights, full=False)
    if layout == "keras3_legacy_full":
        return write_legacy_h5(folder / "model.h5", weights, keras3=True, config=model_config(size, keras3=True))
    if layout == "keras3_weights_h5":
        write_saving_lib_h5(folder / "model.weights.h5", keras3_groups(weights))
        return folder / "model.weights.h5"
    if layout == "keras3_archive":
        return write_keras_archive(folder / "model.keras", model_config(size, keras3=True), keras3_groups(weights))
    raise ValueError(layout)


# ---- an independent NumPy forward pass of the Keras model ------------------------------------------------

def conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """NHWC cross-correlation with 'same' zero padding, as Keras' Conv2D: out = sum_ij x[h+i-1, w+j-1] K[i, j]."""
    kh, kw = kernel.shape[:2]
    _, height, width, _ = x.shape
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[3],))
    for i in range(kh):
        for j in range(kw):
            out += padded[:, i:i + height, j:j + width, :] @ kernel[i, j]
    return out + bias


def max_pool(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def keras_forward(weights: dict, images_nhwc: np.ndarray) -> np.ndarray:
    """The Keras model's output probabilities (sigmoid of the last Dense), in float64."""
    x = images_nhwc.astype(np.float64)
    for name in CONVS:
        kernel, bias = weights[name]
        x = max_pool(np.maximum(conv_same(x, kernel.astype(np.float64), bias.astype(np.float64)), 0))
    x = x.reshape(len(x), -1)  # Keras' Flatten: HWC order
    kernel, bias = weights["dense"]
    x = np.tanh(x @ kernel.astype(np.float64) + bias)
    kernel, bias = weights["dense_1"]
    logits = (x @ kernel.astype(np.float64) + bias)[:, 0]
    return 1 / (1 + np.exp(-logits))


def sample_images(size: int, n: int = 6, seed: int = 1) -> np.ndarray:
    """RGB images in [0, 1] whose channels differ, with patterns along H and W, plus noise (NHWC float32)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    images = []
    for _ in range(n):
        a, b, c = rng.random(3) * 6
        pattern = 0.5 + 0.25 * np.sin(a * rows + b * cols ** 2 + c)[..., None] * rng.random(3)
        images.append(np.clip(pattern + 0.25 * rng.random((size, size, 3)), 0, 1))
    return np.stack(images).astype(np.float32)


def _snake(kind: str) -> str:
    return {"RandomFlip": "random_flip", "RandomRotation": "random_rotation", "RandomZoom": "random_zoom",
            "RandomContrast": "random_contrast", "RandomCrop": "random_crop", "Rescaling": "rescaling"}[kind]
