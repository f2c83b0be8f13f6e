"""Every file Keras would load into the seed's architecture imports, with the probabilities of a NumPy forward
pass of the stored weights; anything else is refused with the first difference named.

The files are written here (tests/models/keras_writers.py) in the layouts Keras 2 and 3 write."""
from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pneumo.models.checkpoints import load_checkpoint, load_weights
from pneumo.models.factory import build_module
from pneumo.models.keras_import import KerasImportError, import_keras, main
from tests.models.keras_writers import (
    KERAS2_13_PATHS,
    KERAS3_EXAMPLE_OBJECTS,
    ONE_BASED,
    adam_state,
    keras3_groups,
    keras_forward,
    keras_weights,
    model_config,
    sample_images,
    seed_layers,
    write_keras_archive,
    write_legacy_h5,
    write_saving_lib_h5,
)

SMALL = 32
EXAMPLE_AUGMENTATION = ("RandomFlip", "RandomRotation", "RandomZoom")  # shared/cases/keras3-layer-names
CUSTOM = {"conv2d": "block1_conv", "conv2d_1": "block2_conv", "conv2d_2": "block3_conv", "dense": "hidden",
          "dense_1": "pneumonia"}


def imported_probabilities(source: Path, images: np.ndarray, **kwargs) -> tuple[np.ndarray, dict]:
    out = source.with_name(source.name + ".ckpt")
    summary = import_keras(source, out, **kwargs)
    checkpoint = load_checkpoint(out)
    module = build_module(OmegaConf.create(checkpoint["pneumo"]["config"]), train=False)
    load_weights(module, checkpoint, out)
    with torch.no_grad():
        logits = module.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    return torch.sigmoid(logits).double().numpy(), summary


def h5_objects(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as handle, h5py.File(io.BytesIO(handle.read("model.weights.h5")), "r") as h5:
        names: list[str] = []
        h5.visit(names.append)
    return names


@pytest.fixture(scope="module")
def small():
    weights, images = keras_weights(seed=5, size=SMALL), sample_images(SMALL, seed=7)
    probs = keras_forward(weights, images)
    assert 0.01 < probs.min() and probs.max() < 0.99 and np.ptp(probs) > 0.05, probs
    return weights, images, probs


# ---- the issue: renamed layers in a Keras 3 .keras archive -----------------------------------------------

def test_renamed_layers_in_a_keras3_archive_import_like_default_names(tmp_path):
    """shared/cases/keras3-layer-names, rebuilt: the same weights, layers named conv2d.. or conv2d_1..; Keras 3
    stores both under layers/conv2d, layers/conv2d_1, ... Both import, with the NumPy probabilities."""
    size, weights = 16, keras_weights(seed=1, size=16)
    groups = keras3_groups(weights, aug_kinds=EXAMPLE_AUGMENTATION)
    layers = {"a_default_names": seed_layers(size, aug_kinds=EXAMPLE_AUGMENTATION),
              "b_one_based_names": seed_layers(size, names=ONE_BASED, aug_kinds=EXAMPLE_AUGMENTATION)}
    images = sample_images(size, n=8, seed=3)
    expected = keras_forward(weights, images)
    assert 0.01 < expected.min() and expected.max() < 0.99 and np.ptp(expected) > 0.05, expected
    probabilities = {}
    for name, spec in layers.items():
        config = model_config(size, keras3=True, layers=spec)
        archive = write_keras_archive(tmp_path / f"{name}.keras", config, groups)
        assert h5_objects(archive) == KERAS3_EXAMPLE_OBJECTS  # Keras 3.6.0's layout, whatever the names
        probabilities[name], summary = imported_probabilities(archive, images)
        assert summary["image_size"] == size and summary["keras_version"] == "3.6.0"
        assert np.abs(probabilities[name] - expected).max() < 1e-5, name
    names = [entry["config"]["name"] for entry in config["config"]["layers"]]
    assert "conv2d_3" in names and "dense_2" in names and "conv2d" not in names  # b really is one-based
    assert np.abs(probabilities["a_default_names"] - probabilities["b_one_based_names"]).max() <= 1e-6


# ---- every variant Keras would load -----------------------------------------------------------------------

def _variant(name: str, folder: Path, weights: dict) -> tuple[Path, dict]:
    """(file, import_keras kwargs) for one way Keras 2 or 3 saves the seed's model."""
    if name == "keras3_keras_functional_renamed_trained":
        config = model_config(SMALL, keras3=True, functional=True, layers=seed_layers(SMALL, names=CUSTOM))
        return write_keras_archive(folder / "m.keras", config, keras3_groups(weights, functional=True),
                                   optimizer=adam_state(weights)), {}
    if name == "keras3_keras_flat_augmentation_rescaling":
        layers = seed_layers(SMALL, augmentation="flat", rescaling=1 / 255)
        groups = keras3_groups(weights, augmentation="flat", rescaling=True)
        return write_keras_archive(folder / "m.keras", model_config(SMALL, keras3=True, layers=layers), groups), {}
    if name == "keras3_weights_h5_no_config":
        write_saving_lib_h5(folder / "m.weights.h5", keras3_groups(weights))
        return folder / "m.weights.h5", {"image_size": SMALL}
    if name == "keras3_weights_h5_functional_with_config":
        write_saving_lib_h5(folder / "m.weights.h5", keras3_groups(weights, functional=True))
        config = model_config(SMALL, keras3=True, functional=True, layers=seed_layers(SMALL, names=ONE_BASED))
        (folder / "model.json").write_text(json.dumps(config))  # model.to_json()
        return folder / "m.weights.h5", {"config_path": folder / "model.json"}
    if name == "keras3_legacy_h5_renamed":
        config = model_config(SMALL, keras3=True, layers=seed_layers(SMALL, names=ONE_BASED))
        return write_legacy_h5(folder / "m.h5", weights, keras3=True, config=config, names=ONE_BASED), {}
    if name == "keras2_h5_functional_renamed":
        config = model_config(SMALL, functional=True, layers=seed_layers(SMALL, names=CUSTOM))
        return write_legacy_h5(folder / "m.h5", weights, config=config, names=CUSTOM, functional=True), {}
    if name == "keras2_weights_h5_renamed":
        return write_legacy_h5(folder / "m.h5", weights, full=False, names=ONE_BASED), {"image_size": SMALL}
    if name == "keras2_13_keras":
        groups = keras3_groups(weights, container="_layer_checkpoint_dependencies", rng=False, **KERAS2_13_PATHS)
        config = model_config(SMALL, archive=True, layers=seed_layers(SMALL, names=ONE_BASED))
        return write_keras_archive(folder / "m.keras", config, groups, version="2.13.1"), {}
    if name == "keras2_13_weights_h5":  # no version in a .weights.h5: the doubled counter is recognised
        groups = keras3_groups(weights, container="_layer_checkpoint_dependencies", rng=False, **KERAS2_13_PATHS)
        write_saving_lib_h5(folder / "m.weights.h5", groups)
        return folder / "m.weights.h5", {"image_size": SMALL}
    if name == "keras2_14_weights_h5":
        write_saving_lib_h5(folder / "m.weights.h5",
                            keras3_groups(weights, container="_layer_checkpoint_dependencies", rng=False))
        return folder / "m.weights.h5", {"image_size": SMALL}
    if name == "keras2_15_keras_functional":
        config = model_config(SMALL, archive=True, functional=True, layers=seed_layers(SMALL, names=CUSTOM))
        groups = keras3_groups(weights, functional=True, rng=False)
        return write_keras_archive(folder / "m.keras", config, groups, version="2.15.0"), {}
    raise ValueError(name)


VARIANTS = ["keras3_keras_functional_renamed_trained", "keras3_keras_flat_augmentation_rescaling",
            "keras3_weights_h5_no_config", "keras3_weights_h5_functional_with_config", "keras3_legacy_h5_renamed",
            "keras2_h5_functional_renamed", "keras2_weights_h5_renamed", "keras2_13_keras", "keras2_13_weights_h5",
            "keras2_14_weights_h5", "keras2_15_keras_functional"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_layout_keras_loads_imports_with_the_numpy_probabilities(tmp_path, small, variant):
    weights, images, expected = small
    source, kwargs = _variant(variant, tmp_path, weights)
    probabilities, summary = imported_probabilities(source, images, **kwargs)
    assert np.abs(probabilities - expected).max() < 1e-5
    assert summary["image_size"] == SMALL
    if variant == "keras3_keras_flat_augmentation_rescaling":  # Keras took 0-255 pixels: the same function
        assert any("Rescaling(1/255)" in note for note in summary["notes"])
    if "no_config" in variant or variant == "keras2_weights_h5_renamed":
        assert any("the seed's Sequential is assumed" in note for note in summary["notes"])


def test_cli_takes_the_architecture_of_a_weights_file_from_config(tmp_path, small, capsys):
    source, kwargs = _variant("keras3_weights_h5_functional_with_config", tmp_path, small[0])
    assert main([str(source), str(tmp_path / "out.ckpt"), "--config", str(kwargs["config_path"])]) == 0
    out = capsys.readouterr().out
    assert "note: architecture from --config" in out and f"image size {SMALL}" in out
    assert "layer 2 ('block1_conv'), a Conv2D, from layers/conv2d:" not in out  # ONE_BASED names, not CUSTOM
    assert "layer 2 ('conv2d_1'), a Conv2D, from layers/conv2d:" in out  # Functional: layer 0 is the input


# ---- refusals: the first difference, named ----------------------------------------------------------------

def _refused(name: str, folder: Path, weights: dict) -> tuple[Path, dict]:
    archive = folder / "m.keras"
    if name == "conv_filters":
        config = model_config(SMALL, keras3=True, layers=seed_layers(SMALL, filters=(32, 48, 128)))
        narrow = keras_weights(size=SMALL, filters=(32, 48, 128))
        return write_keras_archive(archive, config, keras3_groups(narrow)), {}
    if name == "kernel_shape":
        narrow = keras_weights(size=SMALL, filters=(32, 48, 128))
        return write_keras_archive(archive, model_config(SMALL, keras3=True), keras3_groups(narrow)), {}
    if name == "dense_for_another_size":
        bigger = keras_weights(size=2 * SMALL)
        return write_keras_archive(archive, model_config(SMALL, keras3=True), keras3_groups(bigger)), {}
    if name == "rescaling_twice":
        layers = seed_layers(SMALL, rescaling=1 / 255)
        layers.insert(0, dict(layers[0], name="rescaling_0"))
        return write_keras_archive(archive, model_config(SMALL, keras3=True, layers=layers),
                                   keras3_groups(weights)), {}
    if name in ("batch_normalization", "random_crop", "rescaling_to_minus_one", "truncated"):
        layers = seed_layers(SMALL, aug_kinds=("RandomFlip", "RandomRotation", "RandomCrop")) \
            if name == "random_crop" else seed_layers(SMALL, rescaling=1 / 127.5) \
            if name == "rescaling_to_minus_one" else seed_layers(SMALL)
        if name == "batch_normalization":
            layers.insert(2, {"kind": "BatchNormalization", "name": "batch_normalization", "config": {"axis": -1}})
        if name == "truncated":
            layers = layers[:-2]
        return write_keras_archive(archive, model_config(SMALL, keras3=True, layers=layers),
                                   keras3_groups(weights)), {}
    if name == "functional_not_a_chain":
        config = model_config(SMALL, keras3=True, functional=True)
        conv = config["config"]["layers"][4]
        conv["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0] = "conv2d"  # skips the pool
        return write_keras_archive(archive, config, keras3_groups(weights, functional=True)), {}
    if name == "extra_conv_weights":
        groups = {**keras3_groups(weights), "layers/conv2d_3": [np.ones((3, 3, 128, 128), np.float32),
                                                                np.ones(128, np.float32)]}
        write_saving_lib_h5(folder / "m.weights.h5", groups)
        return folder / "m.weights.h5", {"image_size": SMALL}
    if name == "weights_under_layer_names":  # what a name-matching writer would produce: not Keras' layout
        groups = keras3_groups(weights, conv_paths=("conv2d_1", "conv2d_2", "conv2d_3"),
                               dense_paths=("dense_1", "dense_2"))
        config = model_config(SMALL, keras3=True, layers=seed_layers(SMALL, names=ONE_BASED))
        return write_keras_archive(archive, config, groups), {}
    if name == "three_variables":
        groups = keras3_groups(weights)
        groups["layers/dense"] = groups["layers/dense"] + [np.zeros(128, np.float32)]
        return write_keras_archive(archive, model_config(SMALL, keras3=True), groups), {}
    if name == "legacy_dense_without_bias":
        return write_legacy_h5(folder / "m.h5", {**weights, "dense_1": weights["dense_1"][:1]},
                               config=model_config(SMALL)), {}
    if name == "config_twice":
        (folder / "model.json").write_text(json.dumps(model_config(SMALL, keras3=True)))
        return write_keras_archive(archive, model_config(SMALL, keras3=True), keras3_groups(weights)), \
            {"config_path": folder / "model.json"}
    if name == "keras1":
        source = write_legacy_h5(folder / "m.h5", weights, config=model_config(SMALL))
        with h5py.File(source, "a") as h5:
            h5["model_weights"].attrs["keras_version"] = b"1.2.2"
            h5.attrs["keras_version"] = b"1.2.2"
        return source, {}
    if name == "npz_archive":
        with zipfile.ZipFile(archive, "w") as handle:
            handle.writestr("config.json", json.dumps(model_config(SMALL, keras3=True)))
            handle.writestr("model.weights.npz", b"")
        return archive, {}
    if name == "grayscale_input":
        config = json.loads(json.dumps(model_config(SMALL, keras3=True)).replace(f"{SMALL}, 3]", f"{SMALL}, 1]"))
        return write_keras_archive(archive, config, keras3_groups(weights)), {}
    raise ValueError(name)


REFUSALS = {
    "conv_filters": r"not the seed's architecture: layer 3 \('conv2d_1'\): Conv2D with 48 filters where the seed "
                    r"has 64 filters",
    "kernel_shape": r"a kernel of shape \(3, 3, 32, 48\) in layers/conv2d_1 \(layer 3 \('conv2d_1'\), a Conv2D\) "
                    r"where the seed's model at --image-size 32 has \(3, 3, 32, 64\)",
    "dense_for_another_size": r"a kernel of shape \(8192, 128\) in layers/dense \(layer 8 \('dense'\), a Dense\) "
                              r"where the seed's model at --image-size 32 has \(2048, 128\).*pass --image-size 64",
    "batch_normalization": r"layer 2 \('batch_normalization'\): a BatchNormalization where the seed has "
                           r"MaxPooling2D",
    "random_crop": r"layer 0\.2 \('random_crop'\): a RandomCrop where the seed has Conv2D\(32\)",
    "rescaling_to_minus_one": r"layer 0 \('rescaling'\): Rescaling\(scale=0\.00784.*only Rescaling\(1/255\)",
    "rescaling_twice": r"layer 1 \('rescaling'\): a second Rescaling\(1/255\), which scales the pixels twice",
    "truncated": r"the model ends after layer 8 \('dense'\) where the seed continues with Dense\(1\)",
    "functional_not_a_chain": r"layer 4 \('conv2d_1'\) takes its inputs from \[\['conv2d'\]\]; in the seed each "
                              r"layer takes the output of the one before \('max_pooling2d'\)",
    "extra_conv_weights": r"float weights at layers/conv2d_3/vars/0 \(shape \(3, 3, 128, 128\)\) that the seed's "
                          r"model has no place for",
    "weights_under_layer_names": r"no weights at layers/conv2d/vars for layer 1 \('conv2d_1'\), a Conv2D",
    "three_variables": r"layers/dense holds 3 variables \(0, 1, 2\) where the seed's Dense has 2",
    "legacy_dense_without_bias": r"layer #4 with weights, 'dense_1' in the file, layer 10 \('dense_1'\) in the "
                                 r"model, holds 1 float weights",
    "config_twice": r"carries its own architecture",
    "keras1": r"written by Keras 1\.2\.2",
    "npz_archive": r"stored as model\.weights\.npz, which is not supported",
    "grayscale_input": r"takes inputs of shape \(32, 32, 1\)",
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_files_keras_would_not_load_into_the_seed_are_refused(tmp_path, small, case):
    source, kwargs = _refused(case, tmp_path, small[0])
    with pytest.raises(KerasImportError) as error:
        import_keras(source, tmp_path / "out.ckpt", **kwargs)
    message = str(error.value)
    assert message.startswith(f"{source}: ") or (case == "config_twice" and f": {source} carries" in message)
    assert re.search(REFUSALS[case], message), message
    assert not (tmp_path / "out.ckpt").exists()
