"""Importing the seed's Keras model: weights written here in Keras' own file layouts with h5py, imported,
and compared with an independent NumPy forward pass of the Keras computation (NHWC, HWC flatten)."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pneumo.checkpoints import load_checkpoint, load_weights
from pneumo.factory import build_module
from pneumo.keras_import import KerasImportError, dense_hwc_to_chw, import_keras, main
from pneumo.config import PROJECT_ROOT
from tests.conftest import run_entry_point

SIZE = 128
CONVS = ("conv2d", "conv2d_1", "conv2d_2")
DENSES = ("dense", "dense_1")
# The seed's Sequential, as model.layers lists it (the augmentation block is a nested Sequential).
LAYER_ORDER = ("sequential", "conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1", "conv2d_2",
               "max_pooling2d_2", "flatten", "dense", "dropout", "dense_1")


# ---- Keras weights and files, written as Keras writes them ------------------------------------------

def keras_weights(seed: int = 0, size: int = SIZE, filters: tuple[int, ...] = (32, 64, 128)) -> dict:
    """{layer: (kernel, bias)} in Keras shapes, scaled so the output probabilities are spread out."""
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


def model_config(size: int = SIZE, keras3: bool = False, padding: str = "same") -> dict:
    """A Sequential config as Keras 2 (model_config attribute) or Keras 3 (config.json) writes it."""
    def layer(kind, name, **config):
        entry = {"class_name": kind, "config": {"name": name, "trainable": True, "dtype": "float32", **config}}
        return {"module": "keras.layers", **entry} if keras3 else entry

    shape_key = "batch_shape" if keras3 else "batch_input_shape"
    augmentation = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        layer("InputLayer", "input_1", **{shape_key: [None, size, size, 3]}),
        layer("RandomFlip", "random_flip", mode="horizontal"),
        layer("RandomRotation", "random_rotation", factor=0.15),
        layer("RandomZoom", "random_zoom", height_factor=0.2),
        layer("RandomContrast", "random_contrast", factor=0.3)]}}
    conv = dict(kernel_size=[3, 3], strides=[1, 1], padding=padding, data_format="channels_last",
                dilation_rate=[1, 1], groups=1, activation="relu", use_bias=True)
    pool = dict(pool_size=[2, 2], padding="valid", strides=[2, 2], data_format="channels_last")
    layers = [augmentation,
              layer("Conv2D", "conv2d", filters=32, **conv, **{shape_key: [None, size, size, 3]}),
              layer("MaxPooling2D", "max_pooling2d", **pool),
              layer("Conv2D", "conv2d_1", filters=64, **conv), layer("MaxPooling2D", "max_pooling2d_1", **pool),
              layer("Conv2D", "conv2d_2", filters=128, **conv), layer("MaxPooling2D", "max_pooling2d_2", **pool),
              layer("Flatten", "flatten", data_format="channels_last"),
              layer("Dense", "dense", units=128, activation="tanh"), layer("Dropout", "dropout", rate=0.3),
              layer("Dense", "dense_1", units=1, activation="sigmoid")]
    return {"class_name": "Sequential", "config": {"name": "sequential_1", "layers": layers},
            **({"module": "keras", "keras_version": "3.3.3"} if keras3 else {})}


def write_legacy_h5(path: Path, weights: dict, full: bool = True, keras3: bool = False,
                    config: dict | None = None, extra_layers: dict | None = None) -> Path:
    """Keras' HDF5 layout: `layer_names` in model order, per-layer groups with `weight_names`.

    Keras 2: weight names `conv2d/kernel:0`; Keras 3's legacy writer: `sequential_1/conv2d/kernel` (the
    variable path), layer groups created in name order, and a `top_level_model_weights` group.
    """
    extra_layers = extra_layers or {}
    names = list(LAYER_ORDER) + list(extra_layers)
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
        group.attrs["layer_names"] = np.array([n.encode() for n in names])
        group.attrs["backend"] = b"tensorflow"
        group.attrs["keras_version"] = b"3.3.3" if keras3 else b"2.13.1"
        for name in (sorted(names) if keras3 else names):
            layer = group.create_group(name)
            if name == "sequential":  # augmentation: only the random generators' integer state, if anything
                state = "sequential_1/sequential/random_flip/seed_generator_state" if keras3 else \
                    "random_flip/StateVar:0"
                layer.attrs["weight_names"] = np.array([state.encode()])
                layer.create_dataset(state, data=np.array([0, 42], np.uint32 if keras3 else np.int64))
                continue
            values = weights.get(name) or extra_layers.get(name)
            if values is None:
                layer.attrs["weight_names"] = np.asarray([])  # as Keras writes it for weightless layers
                continue
            suffixes = ("kernel", "bias", "moving_mean", "moving_variance")[:len(values)]
            weight_names = [f"sequential_1/{name}/{s}" if keras3 else f"{name}/{s}:0" for s in suffixes]
            layer.attrs["weight_names"] = np.array([n.encode() for n in weight_names])
            for weight_name, value in zip(weight_names, values):
                layer.create_dataset(weight_name, data=value)
        if keras3 and full:
            group.create_group("top_level_model_weights").attrs["weight_names"] = np.asarray([])
    return path


def write_native_h5(target, weights: dict) -> None:
    """Keras 3's .weights.h5: `layers/<name>/vars/0` (kernel), `vars/1` (bias)."""
    with h5py.File(target, "w") as h5:
        h5.create_group("vars")
        layers = h5.create_group("layers")
        for name in LAYER_ORDER:
            variables = layers.create_group(name).create_group("vars")
            if name == "sequential":
                rng_state = layers[name].create_group("layers/random_flip/seed_generator/vars")
                rng_state.create_dataset("0", data=np.array([0, 42], np.uint32))
            for index, value in enumerate(weights.get(name, ())):
                variables.create_dataset(str(index), data=value)


def write_keras_archive(path: Path, weights: dict) -> Path:
    buffer = io.BytesIO()
    write_native_h5(buffer, weights)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.3.3"}))
        archive.writestr("config.json", json.dumps(model_config(keras3=True)))
        archive.writestr("model.weights.h5", buffer.getvalue())
    return path


def write_layout(layout: str, folder: Path, weights: dict) -> Path:
    if layout == "keras2_full":
        return write_legacy_h5(folder / "model.h5", weights)
    if layout == "keras2_weights_only":
        return write_legacy_h5(folder / "weights.h5", weights, full=False)
    if layout == "keras3_legacy_full":
        return write_legacy_h5(folder / "model.h5", weights, keras3=True)
    if layout == "keras3_weights_h5":
        write_native_h5(folder / "model.weights.h5", weights)
        return folder / "model.weights.h5"
    if layout == "keras3_archive":
        return write_keras_archive(folder / "model.keras", weights)
    raise ValueError(layout)


# ---- an independent NumPy forward pass of the Keras model -------------------------------------------

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


def module_from(path: Path):
    checkpoint = load_checkpoint(path)
    module = build_module(OmegaConf.create(checkpoint["pneumo"]["config"]), train=False)
    load_weights(module, checkpoint, path)
    return module.eval(), checkpoint


def port_probabilities(module, images_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = module(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy()).float())
    return torch.sigmoid(logits).double().numpy()


@pytest.fixture(scope="module")
def reference():
    """Known weights, RGB inputs in [0, 1] whose three channels differ, and the Keras probabilities."""
    weights, rng = keras_weights(), np.random.default_rng(1)
    rows, cols = np.meshgrid(np.linspace(0, 1, SIZE), np.linspace(0, 1, SIZE), indexing="ij")
    images = []
    for _ in range(6):  # patterns that differ along H and W and between channels, plus noise
        a, b, c = rng.random(3) * 6
        pattern = 0.5 + 0.25 * np.sin(a * rows + b * cols ** 2 + c)[..., None] * rng.random(3)
        images.append(np.clip(pattern + 0.25 * rng.random((SIZE, SIZE, 3)), 0, 1))
    images = np.stack(images).astype(np.float32)
    probs = keras_forward(weights, images)
    # Neither saturated nor all alike: a wrong port cannot hide behind flat outputs.
    assert 0.01 < probs.min() and probs.max() < 0.99 and np.ptp(probs) > 0.05, probs
    return weights, images, probs


# ---- tests ------------------------------------------------------------------------------------------

def test_dense_permutation_follows_keras_hwc_flatten():
    channels, side, out = 3, 2, 4
    kernel = np.arange(side * side * channels * out, dtype=np.float32).reshape(-1, out)
    weight = dense_hwc_to_chw(kernel, channels, side)
    assert weight.shape == (out, channels * side * side)
    for c in range(channels):
        for h in range(side):
            for w in range(side):
                assert np.array_equal(weight[:, c * side * side + h * side + w],
                                      kernel[h * side * channels + w * channels + c])


@pytest.mark.parametrize("layout", ["keras2_full", "keras2_weights_only", "keras3_legacy_full",
                                    "keras3_weights_h5", "keras3_archive"])
def test_port_matches_the_keras_computation(tmp_path, reference, layout):
    weights, images, expected = reference
    source = write_layout(layout, tmp_path, weights)
    summary = import_keras(source, tmp_path / "keras.ckpt")
    module, checkpoint = module_from(tmp_path / "keras.ckpt")

    difference = np.abs(port_probabilities(module, images) - expected).max()
    print(f"{layout}: max |p_port - p_keras| = {difference:.2e}")
    assert difference < 1e-5
    assert summary["image_size"] == SIZE and summary["parameters"] == 4_287_809
    assert checkpoint["pneumo"]["threshold"] == {"policy": "fixed", "value": 0.5}
    assert checkpoint["pneumo"]["mlflow"] is None
    assert checkpoint["pneumo"]["source"]["keras_h5"] == str(source.resolve())
    assert set(checkpoint["state_dict"]) == {f"model.{k}" for k in module.model.state_dict()}


def test_not_permuting_the_dense_layer_gives_other_probabilities(tmp_path, reference):
    """The check above would catch a port that skipped the HWC -> CHW permutation."""
    weights, images, expected = reference
    import_keras(write_layout("keras2_full", tmp_path, weights), tmp_path / "keras.ckpt")
    module, _ = module_from(tmp_path / "keras.ckpt")
    linear = module.model.head[1]
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weights["dense"][0].T.copy()))  # (in, out) -> (out, in), CHW ignored
    assert np.abs(port_probabilities(module, images) - expected).max() > 0.1  # 0.16 here, against < 1e-5


def test_grayscale_images_through_the_data_path_match_keras_on_rgb(tmp_path, reference):
    """The pipeline caches one uint8 channel and expands it to three: the seed's RGB [0, 1] input."""
    weights = reference[0]
    gray = np.random.default_rng(2).integers(0, 256, (3, 1, SIZE, SIZE), dtype=np.uint8)
    expected = keras_forward(weights, np.repeat(gray.transpose(0, 2, 3, 1), 3, axis=3) / 255.0)
    import_keras(write_layout("keras2_full", tmp_path, weights), tmp_path / "keras.ckpt")
    module, _ = module_from(tmp_path / "keras.ckpt")
    with torch.no_grad():
        probs = torch.sigmoid(module(module.preprocess(torch.from_numpy(gray), train=False))).double().numpy()
    assert np.abs(probs - expected).max() < 1e-5


def test_checkpoint_carries_a_resolved_train_config(tmp_path, reference):
    import_keras(write_layout("keras2_full", tmp_path, reference[0]), tmp_path / "out" / "keras.ckpt",
                 data="synthetic", overrides=["data.synthetic.n_test=40"])
    config = load_checkpoint(tmp_path / "out" / "keras.ckpt")["pneumo"]["config"]
    assert {"data", "model", "module", "optim", "augment", "trainer", "callbacks", "seed", "output_dir",
            "cache_dir", "objective"} <= set(config)
    assert "${" not in json.dumps(config)  # resolved, Hydra's runtime interpolations included
    assert config["output_dir"] == str((tmp_path / "out").resolve())
    assert config["model"]["net"] == {"_target_": "pneumo.models.SeedCNN", "image_size": SIZE, "dropout": 0.3}
    assert config["data"]["image_size"] == SIZE and config["data"]["synthetic"]["n_test"] == 40
    assert config["data"]["_target_"] == "pneumo.data.ChestXrayDataModule"
    assert config["logger"] is None and config["module"]["threshold_policy"] == "fixed"


def test_import_inside_an_initialised_hydra_leaves_it_as_it_was(tmp_path, reference):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3", job_name="outer"):
        outer = GlobalHydra.instance().hydra
        import_keras(write_layout("keras2_weights_only", tmp_path, reference[0]), tmp_path / "keras.ckpt")
        assert GlobalHydra.instance().is_initialized() and GlobalHydra.instance().hydra is outer
    assert not GlobalHydra.instance().is_initialized()


def test_other_image_size_is_found_or_explained(tmp_path):
    weights = keras_weights(size=64)
    source = write_legacy_h5(tmp_path / "weights64.h5", weights, full=False)  # no config: 128 assumed
    with pytest.raises(KerasImportError, match=r"a model for 64x64 images; pass --image-size 64"):
        import_keras(source, tmp_path / "a.ckpt")
    import_keras(source, tmp_path / "b.ckpt", image_size=64)
    module, checkpoint = module_from(tmp_path / "b.ckpt")
    assert checkpoint["pneumo"]["config"]["model"]["net"]["image_size"] == 64
    images = np.random.default_rng(3).random((2, 64, 64, 3))
    assert np.abs(port_probabilities(module, images) - keras_forward(weights, images)).max() < 1e-5
    # With the architecture saved, the input size comes from it.
    full = write_legacy_h5(tmp_path / "model64.h5", weights, config=model_config(size=64))
    assert import_keras(full, tmp_path / "c.ckpt")["image_size"] == 64


def test_wrong_architecture_is_named(tmp_path):
    source = write_legacy_h5(tmp_path / "narrow.h5", keras_weights(filters=(16, 64, 128)))
    with pytest.raises(KerasImportError) as error:
        import_keras(source, tmp_path / "out.ckpt")
    message = str(error.value)
    assert str(source) in message and "kernel (3, 3, 3, 16)" in message and "Conv2D kernel (3, 3, 3, 32)" in message
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.parametrize("case, pattern", [
    ("padding", r"padding='valid' \(expected 'same'\)"),
    ("batchnorm", r"layer 'batch_normalization' holds weights"),
    ("missing_dense", r"expected 3 Conv2D and 2 Dense layers"),
])
def test_other_architectures_fail_clearly(tmp_path, case, pattern):
    weights = keras_weights()
    if case == "padding":
        source = write_legacy_h5(tmp_path / "m.h5", weights, config=model_config(padding="valid"))
    elif case == "batchnorm":
        extra = {"batch_normalization": tuple(np.ones(32, np.float32) for _ in range(4))}
        source = write_legacy_h5(tmp_path / "m.h5", weights, full=False, extra_layers=extra)
    else:
        del weights["dense"]
        source = write_legacy_h5(tmp_path / "m.h5", weights, full=False)
    with pytest.raises(KerasImportError, match=pattern):
        import_keras(source, tmp_path / "out.ckpt")


def test_cli_user_errors_exit_non_zero_with_a_message(tmp_path, capsys):
    cases = {tmp_path / "absent.h5": "does not exist", tmp_path / "notes.h5": "is not an HDF5 file",
             tmp_path: "is a directory"}
    (tmp_path / "notes.h5").write_text("not weights")
    for path, message in cases.items():
        assert main([str(path), str(tmp_path / "out.ckpt")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(path) in err and message in err
    assert main([str(write_legacy_h5(tmp_path / "m.h5", keras_weights())), str(tmp_path / "o.ckpt"),
                 "--data", "nope"]) == 1
    assert "--data nope" in capsys.readouterr().err


def _run_import(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "pneumo.keras_import", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_import_then_evaluate_through_the_entry_points(tmp_path, reference):
    weights = reference[0]
    valid = write_legacy_h5(tmp_path / "valid.h5", weights, config=model_config(padding="valid"))
    failed = _run_import(str(valid), str(tmp_path / "valid.ckpt"))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr and not (tmp_path / "valid.ckpt").exists()
    assert failed.stderr.startswith(f"error: {valid}: ") and "padding='valid'" in failed.stderr

    source, ckpt = write_legacy_h5(tmp_path / "seed.h5", weights), tmp_path / "keras.ckpt"
    imported = _run_import(str(source), str(ckpt), "--data", "synthetic")
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert f"evaluate.py ckpt={ckpt}" in imported.stdout

    out = tmp_path / "eval"
    result = run_entry_point("evaluate.py", f"ckpt={ckpt}", "data=synthetic", "data.synthetic.n_train=80",
                             "data.synthetic.n_test=40", "data.synthetic.min_side=512",
                             "data.synthetic.max_side=600", "logger=none", "gradcam.n=0",
                             "bootstrap.resamples=100", f"cache_dir={tmp_path}/cache", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["n"]["total"] == 40
    assert report["threshold"]["policy"] == "fixed" and report["threshold"]["value"] == 0.5

    # The probabilities evaluate.py wrote are the Keras model's on the same decoded images.
    from pneumo.images import decode_image

    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))[:6]
    gray = np.stack([decode_image(row["path"], SIZE, 1) for row in rows])
    expected = keras_forward(weights, np.repeat(gray.transpose(0, 2, 3, 1), 3, axis=3) / 255.0)
    written = np.array([float(row["probability"]) for row in rows])
    assert np.abs(written - expected).max() < 1e-5  # predictions.csv keeps 6 decimals
