"""A real tracking server: runs reach it, its absence is a clear choice, its death mid-run loses nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pneumo.config import PROJECT_ROOT
from tests.conftest import free_port, run_entry_point

EPOCHS = 2


def _args(tmp: Path, uri: str, epochs: int = EPOCHS) -> list[str]:
    return ["data=synthetic", "data.synthetic.n_train=80", "data.synthetic.n_test=40",
            "data.synthetic.min_side=512", "data.synthetic.max_side=600", "data.image_size=64",
            f"trainer.max_epochs={epochs}", f"cache_dir={tmp}/cache", f"logger.tracking_uri={uri}",
            f"logger.local_tracking_uri=sqlite:///{tmp}/local.db", f"logger.artifact_location=file://{tmp}/local_art",
            f"hydra.run.dir={tmp}/run"]


def test_training_against_a_real_server_is_read_back_whole(tmp_path, mlflow_server):
    result = run_entry_point("train.py", *_args(tmp_path, mlflow_server.uri))
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.max_epochs"] == str(EPOCHS) and run.data.params["data.image_size"] == "64"
    for key in ("train/loss", "val/loss", "val/auroc", "val/sensitivity", "val/tp"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == sorted(
            {m.step for m in client.get_metric_history(run.info.run_id, key)}) and len(
            client.get_metric_history(run.info.run_id, key)) == EPOCHS
    # the best weights, once: the MLflow model's artifact (not repeated under checkpoints/)
    assert client.list_artifacts(run.info.run_id, "checkpoints") == []
    from pneumo.tracking.registry import resolve_model_checkpoint

    downloaded = resolve_model_checkpoint(f"runs:/{run.info.run_id}/model", mlflow_server.uri, tmp_path / "dl")
    assert "best-epoch" in downloaded.name
    assert downloaded.stat().st_size > 1_000_000  # the weights travelled through the server
    assert not (tmp_path / "local.db").exists()


def test_unreachable_server_is_an_error_by_default(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    result = run_entry_point("train.py", *_args(tmp_path, uri))
    assert result.returncode != 0
    assert f"MLflow tracking server {uri} is unreachable" in result.stderr
    assert "logger.on_unreachable=local" in result.stderr


def test_unreachable_server_can_fall_back_to_the_local_store(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    result = run_entry_point("train.py", *_args(tmp_path, uri), "logger.on_unreachable=local")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "goes to the local store" in result.stdout + result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/local.db")
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "val/auroc")) == EPOCHS


@pytest.mark.slow
def test_server_dying_mid_run_keeps_training_and_reports_what_was_lost(tmp_path, mlflow_server):
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    process = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "train.py"),
                                *_args(tmp_path, mlflow_server.uri, epochs=4), "data.batch_size=8"],
                               cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = tmp_path / "run" / "checkpoints" / "last.ckpt"
    while not first.exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.1)
    mlflow_server.stop()
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    assert "stopped answering" in output
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert len(list((tmp_path / "run" / "checkpoints").glob("best-epoch*.ckpt"))) == 1
    lost = [json.loads(line) for line in (tmp_path / "run" / "mlflow_unlogged.jsonl").read_text().splitlines()]
    logged_steps = {entry["payload"]["step"] for entry in lost if entry["what"].startswith("metrics")}
    assert logged_steps, lost[:3]  # later epochs' metrics are kept locally, not dropped
    assert any("checkpoints" in str(entry["payload"]) or entry["what"].endswith(".ckpt") for entry in lost)
