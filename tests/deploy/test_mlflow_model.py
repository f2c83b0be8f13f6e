"""The MLflow model training logs: a pyfunc model whose one artifact is the weights-only checkpoint, stored once,
answering like `load_trained` (the same weights, preprocessing and temperature as evaluate.py)."""
from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from pneumo.data.readers import read_image
from pneumo.deploy.registry import default_store
from pneumo.evaluation.trained import load_trained
from pneumo.tracking.registry import resolve_model_checkpoint


def _artifact_files(folder: Path) -> list[Path]:
    """Every file of the run's local artifact store (the run's own artifacts and its logged models)."""
    return [p for p in (folder / "mlruns" / "artifacts").rglob("*") if p.is_file()]


def test_the_checkpoint_is_stored_once_as_the_models_artifact(trained_run, tmp_path):
    client = MlflowClient(trained_run.tracking_uri)
    run = client.get_run(trained_run.run_id)
    assert client.list_artifacts(trained_run.run_id, "checkpoints") == []  # not a second time under checkpoints/
    assert run.data.tags["best_checkpoint_uri"] == f"runs:/{trained_run.run_id}/model"
    big = [p for p in _artifact_files(trained_run.folder) if p.stat().st_size > 1_000_000]
    assert len(big) == 1 and big[0].suffix == ".ckpt", big  # the weights once, no pickled module beside them

    local = resolve_model_checkpoint(f"runs:/{trained_run.run_id}/model", trained_run.tracking_uri, tmp_path / "dl")
    assert local.name == trained_run.best.name and local.is_relative_to(tmp_path / "dl")
    logged = torch.load(local, map_location="cpu", weights_only=True)
    full = torch.load(trained_run.best, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in logged and "loops" not in logged  # weights only: evaluates and serves
    assert logged["state_dict"].keys() == full["state_dict"].keys()
    assert all(torch.equal(logged["state_dict"][k], full["state_dict"][k]) for k in full["state_dict"])
    assert logged["pneumo"]["threshold"] == full["pneumo"]["threshold"]
    flavors = yaml.safe_load((local.parent.parent / "MLmodel").read_text())["flavors"]
    assert set(flavors) == {"python_function"} and flavors["python_function"]["artifacts"]["checkpoint"]["path"] \
        == f"artifacts/{local.name}"


def test_the_pyfunc_model_answers_with_the_calibrated_probability(trained_run, tiny_root, tmp_path):
    with default_store(trained_run.tracking_uri):  # as `mlflow models serve -m runs:/ID/model` loads it
        model = mlflow.pyfunc.load_model(f"runs:/{trained_run.run_id}/model", dst_path=str(tmp_path))
    trained = load_trained(trained_run.best)
    files = sorted((tiny_root / "test").rglob("*.jpeg"))[:6]
    images = np.stack([read_image(f, trained.image_size, trained.channels) for f in files])
    served = model.predict(images)
    assert served.dtype == np.float64 and served.shape == (6,)
    np.testing.assert_allclose(served, trained.probabilities(images), rtol=0, atol=1e-12)
    # sigmoid(logit / T) with the checkpoint's fitted temperature, not the plain sigmoid
    assert trained.temperature != 1.0
    with torch.no_grad():
        logits = trained.module.model(trained.module.preprocess(torch.from_numpy(images), train=False)).reshape(-1)
    np.testing.assert_allclose(served, torch.sigmoid(logits.double() / trained.temperature).numpy(), atol=1e-6)
    assert not np.allclose(served, torch.sigmoid(logits.double()).numpy(), atol=1e-3)
    with pytest.raises(Exception, match=r"shape"):  # the signature's or the model's own check, naming the shape
        model.predict(images[:, :, :32, :32])


@pytest.mark.slow
def test_mlflow_model_false_keeps_the_best_weights_under_checkpoints(tmp_path):
    """Without the MLflow model the weights-only checkpoint is logged under checkpoints/ as before."""
    from tests.conftest import TINY_DATA, isolated_overrides, run_entry_point

    result = run_entry_point("train.py", *TINY_DATA, "trainer.max_epochs=1", "mlflow_model=false",
                             "data.synthetic.n_train=40", "data.synthetic.n_test=8", *isolated_overrides(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    [checkpoint] = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert Path(checkpoint).name.startswith("best-epoch") and "best_checkpoint_uri" not in run.data.tags
    assert client.search_logged_models([run.info.experiment_id]) == []
