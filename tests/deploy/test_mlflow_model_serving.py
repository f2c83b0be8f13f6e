"""`mlflow models serve` answers with the pyfunc model training logged, the same probability as evaluate.py
(run on `ckpt=runs:/RUN_ID/model`, so the checkpoint comes out of the MLflow store too)."""
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

from pneumo.data.readers import read_image
from tests.conftest import free_port, run_entry_point


def _serve(model_uri: str, tracking_uri: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    server = subprocess.Popen([f"{bin_dir}/mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 180
    while True:
        assert server.poll() is None, server.stderr.read()[-3000:]
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
            return server, port
        except OSError:
            assert time.time() < deadline, "model server did not start"
            time.sleep(0.5)


def test_served_model_answers_like_evaluate_on_the_mlflow_model(trained_run, tiny_root, tmp_path):
    model_uri = f"runs:/{trained_run.run_id}/model"
    evaluated = run_entry_point("evaluate.py", f"ckpt={model_uri}", f"logger.tracking_uri={trained_run.tracking_uri}",
                                f"logger.artifact_location=file://{tmp_path}/eval_artifacts", "data=chest_xray",
                                f"data.root={tiny_root}", f"cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/eval",
                                "gradcam.n=0", "bootstrap.resamples=50")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["checkpoint"]["model"]["uri"] == model_uri
    assert Path(report["checkpoint"]["path"]).is_relative_to(tmp_path / "eval" / "model")  # downloaded for the report
    assert report["checkpoint"]["train_run"] == trained_run.run_id
    with open(tmp_path / "eval" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))[:3]

    server, port = _serve(model_uri, trained_run.tracking_uri)
    try:
        pixels = [read_image(row["path"], 64, 1).tolist() for row in rows]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": pixels}).encode(),
                                         headers={"Content-Type": "application/json"})
        served = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
        wrong = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                       data=json.dumps({"inputs": [[[[0] * 8] * 8]]}).encode(),
                                       headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(wrong, timeout=60)
            refused = ""
        except urllib.error.HTTPError as error:
            refused = error.read().decode()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    assert len(served) == 3
    for value, row in zip(served, rows):
        assert abs(value - float(row["probability"])) < 1e-5, (value, row["probability"])
    assert "shape" in refused  # an image of the wrong size is refused with the expected shape
