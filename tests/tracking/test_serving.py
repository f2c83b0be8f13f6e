"""The model logged in MLflow format is served by `mlflow models serve` and agrees with evaluate.py."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

from pneumo.data.readers import read_image
from tests.conftest import free_port, isolated_overrides, run_entry_point

TINY = ["data=synthetic", "data.synthetic.n_train=80", "data.synthetic.n_test=40", "data.synthetic.min_side=512",
        "data.synthetic.max_side=600", "data.image_size=64", "trainer.max_epochs=1"]


def test_served_model_answers_like_evaluate(tmp_path):
    result = run_entry_point("train.py", *TINY, *isolated_overrides(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    best = next((tmp_path / "run" / "checkpoints").glob("best-epoch*.ckpt"))
    overrides = [o for o in isolated_overrides(tmp_path) if not o.startswith("hydra.run.dir")]
    evaluated = run_entry_point("evaluate.py", f"ckpt={best}", *overrides, f"hydra.run.dir={tmp_path}/eval",
                                "gradcam.n=0", "bootstrap.resamples=50")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    with open(tmp_path / "eval" / "predictions.csv") as handle:
        row = next(csv.DictReader(handle))

    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    server = subprocess.Popen([f"{bin_dir}/mlflow", "models", "serve", "-m", f"runs:/{run.info.run_id}/model",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.stderr.read()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "model server did not start"
                time.sleep(0.5)
        pixels = read_image(row["path"], 64, 1)[None]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": pixels.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        served = json.loads(urllib.request.urlopen(request, timeout=30).read())["predictions"][0]
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    assert abs(served - float(row["probability"])) < 1e-5, (served, row["probability"])
