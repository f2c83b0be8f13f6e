"""The ONNX export of every pretrained backbone in conf/model (random weights: nothing is downloaded), and of
a 3-channel model: ONNX Runtime matches `TrainedModel.probabilities` on the demo test images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pneumo.config import CONFIG_DIR
from pneumo.deploy.export import export_onnx
from pneumo.deploy.onnx_runtime import OnnxModel
from pneumo.evaluation.trained import load_trained
from pneumo.models.factory import build_module
from pneumo.models.keras_import import compose_train_config
from tests.deploy.onnx_helpers import demo_test_images

BACKBONES = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml") if p.stem != "baseline")


def write_checkpoint(tmp_path, model: str, channels: int):
    """A checkpoint as train.py writes one (config, weights, threshold, temperature), untrained."""
    size = int(OmegaConf.load(CONFIG_DIR / "model" / f"{model}.yaml").image_size)
    extra = [f"model={model}", f"data.channels={channels}"]
    extra += ["model.pretrained=false"] if model != "baseline" else []
    config = compose_train_config("synthetic", size, tmp_path / "run", extra)
    module = build_module(OmegaConf.create(config), train=False)
    path = tmp_path / f"{model}.ckpt"
    torch.save({"state_dict": module.state_dict(),
                "pneumo": {"config": config, "threshold": {"policy": "fixed", "value": 0.4}, "mlflow": None,
                           "calibration": {"method": "temperature", "temperature": 1.5}}}, path)
    return path, size


@pytest.mark.slow
@pytest.mark.parametrize(("model", "channels"), [*((name, 1) for name in BACKBONES), ("baseline", 3)])
def test_every_model_config_exports_with_parity(model, channels, tiny_root, tmp_path):
    path, size = write_checkpoint(tmp_path, model, channels)
    trained = load_trained(path)
    assert (trained.image_size, trained.channels, trained.temperature) == (size, channels, 1.5)
    images = demo_test_images(tiny_root, size, channels)
    onnx_path = export_onnx(trained, tmp_path / "out", check_images=images[:4])
    onnx_model = OnnxModel(onnx_path)
    difference = np.abs(onnx_model.probabilities(images) - trained.probabilities(images)).max()
    assert difference <= 1e-5, (model, difference)
    assert (onnx_model.image_size, onnx_model.channels, onnx_model.threshold) == (size, channels, 0.4)
