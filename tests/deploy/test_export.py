"""The ONNX export: ONNX Runtime gives the PyTorch model's probabilities (preprocessing and temperature in the
graph), the sidecar says how to use it, and the model lands in the checkpoint's MLflow training run."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import onnx
import pytest
from omegaconf import OmegaConf

from pneumo.deploy.export import PARITY_TOLERANCE, run_export, sidecar_path
from pneumo.deploy.onnx_runtime import OnnxModel, OnnxModelError
from pneumo.deploy.onnx_tracking import ONNX_URI_TAG, find_training_run
from tests.deploy.onnx_helpers import exported_once, run_module


@pytest.fixture(scope="module")
def exported(trained_run, tiny_root, tmp_path_factory):
    return exported_once(trained_run, tiny_root, tmp_path_factory.mktemp("export"))


def test_onnx_runtime_gives_the_pytorch_probabilities_on_the_demo_test_images(exported):
    trained, path, images = exported
    onnx_probs = OnnxModel(path).probabilities(images)
    torch_probs = trained.probabilities(images)
    assert onnx_probs.dtype == np.float64 and onnx_probs.shape == (40,)
    assert np.abs(onnx_probs - torch_probs).max() <= 1e-5
    assert onnx_probs.std() > 0  # a model that answers every image alike would hide a broken graph
    # The temperature is inside the graph: P is sigmoid(logit / T) with the checkpoint's T, not sigmoid(logit).
    metadata = json.loads(sidecar_path(path).read_text())
    assert metadata["export"]["parity_max_abs_diff"] <= PARITY_TOLERANCE and metadata["export"]["parity_images"] == 40
    if trained.temperature != 1.0:
        logits = np.log(torch_probs / (1 - torch_probs)) * trained.temperature
        assert np.abs(1 / (1 + np.exp(-logits)) - onnx_probs).max() > 1e-4


def test_the_graph_takes_any_batch_size_and_refuses_other_input(exported):
    trained, path, images = exported
    model = OnnxModel(path, batch_size=16)  # 40 images: three session runs
    whole = model.probabilities(images)
    assert np.allclose(model.probabilities(images[:1]), whole[:1], atol=1e-6)
    assert np.allclose(model.probabilities(images[3:10]), whole[3:10], atol=1e-6)
    assert model.probabilities(images[:0]).shape == (0,)
    [graph_input] = onnx.load(str(path)).graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [trained.channels, 64, 64]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    with pytest.raises(ValueError, match=r"uint8 images \(N, 1, 64, 64\)"):
        model.probabilities(images.astype(np.float32))
    with pytest.raises(ValueError, match="read_image"):
        model.probabilities(images[:, :, :32, :32])


def test_the_sidecar_says_how_to_use_the_model(exported, trained_run):
    trained, path, _ = exported
    assert path.name == "model.onnx" and sidecar_path(path) == path.parent / "model.json"
    metadata = json.loads(sidecar_path(path).read_text())
    model = OnnxModel(path)
    assert model.metadata == metadata
    assert model.threshold == pytest.approx(trained.threshold["value"]) == metadata["threshold"]
    assert model.temperature == pytest.approx(trained.temperature)
    assert (model.image_size, model.channels) == (64, 1) == (metadata["image_size"], metadata["channels"])
    assert metadata["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert metadata["train_run_id"] == trained_run.run_id
    assert metadata["checkpoint"]["path"] == str(trained.path.resolve()) and len(metadata["checkpoint"]["sha256"]) == 64
    assert metadata["data"]["name"] == "synthetic" and metadata["data"]["image_size"] == 64
    assert metadata["input"]["dtype"] == "uint8" and metadata["output"]["name"] == "probability"


def test_a_graph_without_its_sidecar_is_refused_with_the_fix(exported, tmp_path):
    _, path, _ = exported
    lone = tmp_path / "model.onnx"
    shutil.copy(path, lone)
    with pytest.raises(OnnxModelError, match=r"no sidecar .*model\.json.*pneumo\.export"):
        OnnxModel(lone)


def test_export_logs_the_model_into_the_training_run(trained_run, tmp_path, capsys):
    import mlflow
    from mlflow import MlflowClient

    uri = _copy_store(trained_run.folder / "mlruns", tmp_path / "mlruns")  # the shared run's store stays as it was
    shared_files = sorted((trained_run.folder / "mlruns").rglob("*"))
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(trained_run.best, ckpt)
    cfg = OmegaConf.create({"ckpt": str(ckpt), "format": "onnx", "tracking_uri": uri, "log_to_mlflow": True,
                            "output_dir": str(tmp_path / "out")})
    result = run_export(cfg)
    assert result["mlflow"] and result["mlflow_problem"] is None
    assert f"logged into training run {trained_run.run_id}" in capsys.readouterr().out
    run = MlflowClient(uri).get_run(trained_run.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[ONNX_URI_TAG] == result["mlflow"]
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(result["mlflow"])
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 64, 64), dtype=np.uint8)
    logged = np.asarray(served.predict(images)["probability"], dtype=np.float64)
    assert np.allclose(logged, OnnxModel(result["model"]).probabilities(images), atol=1e-7)
    assert sorted((trained_run.folder / "mlruns").rglob("*")) == shared_files  # nothing written into the shared store


def _copy_store(source: Path, target: Path) -> str:
    """A copy of a sqlite MLflow store whose artifact locations point into the copy: a plain copy keeps
    the absolute file:// locations, and logging into it would write into `source`'s artifacts."""
    shutil.copytree(source, target)
    with sqlite3.connect(target / "mlflow.db") as db:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("logged_models", "artifact_location")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)",
                       (f"file://{source}", f"file://{target}"))
    return f"sqlite:///{target}/mlflow.db"


def test_an_unreachable_run_is_reported_and_the_files_are_still_written(trained_run, tmp_path):
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(trained_run.best, ckpt)
    absent = tmp_path / "moved" / "mlflow.db"
    out = tmp_path / "out"
    result = run_module("pneumo.export", f"ckpt={ckpt}", f"tracking_uri=sqlite:///{absent}",
                             f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"MLflow: not logged (the store {absent} does not exist" in result.stdout
    assert (out / "model.onnx").is_file() and json.loads((out / "model.json").read_text())["train_run_id"]
    assert not absent.exists()  # reported, not created empty
    assert "does not answer" in find_training_run("0" * 32, "http://127.0.0.1:9")  # no server on port 9
    assert "names no MLflow training run" in find_training_run(None, "sqlite:///x.db")


def _tiny_onnx(folder: Path, run_id: str) -> Path:
    """A hand-built graph (uint8 (N, 1, 4, 4) -> float32 (N,) mean / 255) and its sidecar: no model to train."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
         helper.make_node("Div", ["m", "scale"], ["probability"])],
        "tiny", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"])],
        initializer=[helper.make_tensor("scale", TensorProto.FLOAT, [], [255.0])])
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    sidecar_path(path).write_text(json.dumps({
        "channels": 1, "image_size": 4, "input": {"name": "images"}, "output": {"name": "probability"},
        "threshold": 0.5, "threshold_policy": "fixed", "temperature": 1.0, "class_names": ["NORMAL", "PNEUMONIA"],
        "train_run_id": run_id}))
    return path


def test_logging_the_export_leaves_a_running_training_run_running(tmp_path):
    # Exporting ckpt=last while training still runs: the run is written to, not reopened and closed.
    import mlflow
    from mlflow import MlflowClient

    from pneumo.deploy.onnx_tracking import log_onnx_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    before = mlflow.get_tracking_uri()
    found = find_training_run(run_id, uri)
    assert found.status == "RUNNING"
    model_uri = log_onnx_model(_tiny_onnx(tmp_path, run_id), found)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.info.end_time is None
    assert run.data.tags[ONNX_URI_TAG] == model_uri
    logged = client.get_logged_model(model_uri.split("/")[-1])
    assert logged.source_run_id == run_id and logged.experiment_id == experiment  # the run's, not Default
    assert logged.artifact_location.startswith((tmp_path / "artifacts").as_uri())
    assert mlflow.get_tracking_uri() == before and mlflow.active_run() is None  # the process's MLflow as it was
