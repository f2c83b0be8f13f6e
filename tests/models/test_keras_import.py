"""Importing the seed's Keras model: weights written here in Keras' own file layouts with h5py, imported,
and compared with an independent NumPy forward pass of the Keras computation (NHWC, HWC flatten)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pneumo.config import PROJECT_ROOT
from pneumo.models.checkpoints import load_checkpoint, load_weights
from pneumo.models.factory import build_module
from pneumo.models.keras_import import KerasImportError, dense_hwc_to_chw, import_keras, main
from tests.conftest import run_entry_point
from tests.models.keras_writers import (
    keras_forward,
    keras_weights,
    model_config,
    sample_images,
    write_layout,
    write_legacy_h5,
)

SIZE = 128


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
    weights, images = keras_weights(), sample_images(SIZE)
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
    assert config["model"]["net"] == {"_target_": "pneumo.models.seed_cnn.SeedCNN", "image_size": SIZE, "dropout": 0.3}
    assert config["data"]["image_size"] == SIZE and config["data"]["synthetic"]["n_test"] == 40
    assert config["data"]["_target_"] == "pneumo.data.datamodule.ChestXrayDataModule"
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
    assert message.startswith(f"{source}: a kernel of shape (3, 3, 3, 16)")
    assert "(layer 1 ('conv2d'), a Conv2D) where the seed's model at --image-size 128 has (3, 3, 3, 32)" in message
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.parametrize("case, pattern", [
    ("padding", r"layer 1 \('conv2d'\): Conv2D with padding='valid' where the seed has padding='same'"),
    ("batchnorm", (r"6 layers with float weights in the file \(.*'batch_normalization'.*\) where the seed's model "
                   r"has 5")),
    ("missing_dense", r"4 layers with float weights in the file .* where the seed's model has 5"),
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
    return subprocess.run([sys.executable, "-m", "pneumo.models.keras_import", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, check=False)


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
    from pneumo.data.readers import read_image

    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))[:6]
    gray = np.stack([read_image(row["path"], SIZE, 1) for row in rows])
    expected = keras_forward(weights, np.repeat(gray.transpose(0, 2, 3, 1), 3, axis=3) / 255.0)
    written = np.array([float(row["probability"]) for row in rows])
    assert np.abs(written - expected).max() < 1e-5  # predictions.csv keeps 6 decimals
