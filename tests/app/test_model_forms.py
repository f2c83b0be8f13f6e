"""Every form `model=` takes ends as one reviewed model with the right facts and the project's probabilities:
an ONNX export (Grad-CAM from the checkpoint its sidecar names, or a note saying it needs one) and a registered
model by alias (name, version, training run). The page's server and browser tests cover the checkpoint path."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumo.app.page import render_page
from pneumo.app.reviewed_model import load_reviewed_model
from pneumo.app.scoring import Reviewer
from pneumo.data.readers import read_image
from pneumo.evaluation.trained import load_trained
from tests.deploy.onnx_helpers import exported_once

UNUSED_STORE = "sqlite:///nowhere/mlflow.db"  # a file path or ONNX file never touches the store


def _jpeg(tiny_root: Path) -> Path:
    return min((tiny_root / "test" / "PNEUMONIA").glob("*.jpeg"))


def test_an_onnx_export_scores_with_onnx_runtime_and_explains_with_its_checkpoint(trained_run, tiny_root,
                                                                                 tmp_path_factory, tmp_path):
    trained, onnx_path, _ = exported_once(trained_run, tiny_root, tmp_path_factory.mktemp("export"))
    model = load_reviewed_model(str(onnx_path), UNUSED_STORE, tmp_path / "download")
    assert (model.kind, model.version, model.train_run_id) == ("onnx", None, trained_run.run_id)
    assert model.threshold == pytest.approx(trained.threshold["value"]) and model.image_size == trained.image_size
    assert model.explainer is not None and str(trained.path.resolve()) in model.gradcam_note

    image = _jpeg(tiny_root)
    answer = Reviewer(model, 128, tmp_path).review(image.read_bytes(), image.name)
    decoded = read_image(image, model.image_size, model.channels)
    assert answer["probability"] == float(model.probabilities(decoded[None])[0])  # ONNX Runtime's own number
    assert abs(answer["probability"] - float(trained.probabilities(decoded[None])[0])) < 1e-4  # ~ PyTorch's
    assert answer["gradcam"] is not None
    assert list(tmp_path.iterdir()) == []  # the upload's folder is gone once answered


def test_an_onnx_export_without_its_checkpoint_says_grad_cam_needs_it(trained_run, tiny_root, tmp_path_factory,
                                                                     tmp_path):
    _, onnx_path, _ = exported_once(trained_run, tiny_root, tmp_path_factory.mktemp("export"))
    moved = tmp_path / "shipped"
    moved.mkdir()
    shutil.copy(onnx_path, moved / "model.onnx")
    sidecar = json.loads(onnx_path.with_suffix(".json").read_text())
    sidecar["checkpoint"]["path"] = str(tmp_path / "on-another-machine" / "best.ckpt")
    (moved / "model.json").write_text(json.dumps(sidecar))

    model = load_reviewed_model(str(moved / "model.onnx"), UNUSED_STORE, tmp_path / "download")
    assert model.explainer is None and model.gradcam_note.startswith("Grad-CAM needs the PyTorch checkpoint")
    image = _jpeg(tiny_root)
    answer = Reviewer(model, 128, moved).review(image.read_bytes(), image.name)
    assert answer["ok"] and answer["gradcam"] is None and answer["gradcam_note"] == model.gradcam_note
    assert "Grad-CAM needs the PyTorch checkpoint" in render_page(model, 20)


def test_a_registered_model_shows_its_name_version_and_training_run(trained_run, tiny_root, tmp_path):
    from pneumo.deploy.registry import set_alias
    from pneumo.models.checkpoints import load_checkpoint
    from tests.deploy.test_registry import register_checkpoint

    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert register_checkpoint(store, load_checkpoint(trained_run.best)) == "1"
    set_alias(store, "pneumo", 1)
    model = load_reviewed_model("models:/pneumo@champion", store, tmp_path / "download")
    assert (model.name, model.version, model.train_run_id) == ("pneumo", "1", trained_run.run_id)
    assert model.explainer.path.is_relative_to(tmp_path / "download")  # downloaded into the page's folder

    page = render_page(model, 20)
    for shown in ('id="model-name">pneumo<', 'id="model-version">1<', f'id="model-run">{trained_run.run_id}<'):
        assert shown in page
    trained = load_trained(trained_run.best)
    decoded = read_image(_jpeg(tiny_root), trained.image_size, trained.channels)[None]
    assert np.array_equal(model.probabilities(decoded), trained.probabilities(decoded))
