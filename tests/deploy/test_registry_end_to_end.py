"""The registry as a user meets it, against a real `mlflow server`: train.py registers its model, the promotion
makes it champion, evaluate.py reports on `ckpt=models:/pneumo@champion`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from pneumo.config import PROJECT_ROOT
from tests.conftest import TINY_DATA, run_entry_point


@pytest.mark.slow
def test_train_registers_promote_crowns_evaluate_reads_the_champion(tmp_path, mlflow_server, tiny_root):
    store = [f"logger.tracking_uri={mlflow_server.uri}", f"cache_dir={tmp_path}/cache"]
    trained = run_entry_point("train.py", *TINY_DATA, "trainer.max_epochs=1", "registry.register=true", *store,
                              f"hydra.run.dir={tmp_path}/run")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "python -m pneumo.promote name=pneumo version=1" in trained.stdout + trained.stderr
    client = MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri)
    [version] = client.search_model_versions("name = 'pneumo'")
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    assert version.tags["pneumo.train_run_id"] == run.info.run_id and "pneumo.val_auroc" in version.tags

    promoted = subprocess.run([sys.executable, "-m", "pneumo.promote", "version=1", f"tracking_uri={mlflow_server.uri}",
                               "data=chest_xray", f"data.root={tiny_root}", f"cache_dir={tmp_path}/cache",
                               f"hydra.run.dir={tmp_path}/promote"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert "Decision: first champion" in promoted.stdout
    assert str(client.get_model_version_by_alias("pneumo", "champion").version) == "1"

    evaluated = run_entry_point("evaluate.py", "ckpt=models:/pneumo@champion", *store, "gradcam.n=0",
                                "bootstrap.resamples=50", f"hydra.run.dir={tmp_path}/eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["checkpoint"]["model"] == {"uri": "models:/pneumo@champion", "name": "pneumo", "version": "1"}
    assert report["checkpoint"]["train_run"] == run.info.run_id
    assert "ckpt=models:/pneumo@champion" in evaluated.stdout and "registered pneumo version 1" in evaluated.stdout
    missing = run_entry_point("evaluate.py", "ckpt=models:/pneumo@staging", *store, f"hydra.run.dir={tmp_path}/e2")
    assert missing.returncode != 0 and "has no alias 'staging'" in missing.stderr
