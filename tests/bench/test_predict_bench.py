"""`python -m pneumo.bench --predict N`: one JSON line with each runtime's pipeline rate, its ceiling, the
parallel decode rate and the ratios, run without MLflow or Hydra."""
from __future__ import annotations

import json
import math

import pytest

from pneumo.bench.cli import parse_args
from pneumo.demo.synthetic import ensure_synthetic_dataset
from tests.bench.test_bench import BLOCKED_RUN, _python

N_IMAGES = 20
RATES = ("decode_img_s", "torch_ceiling_img_s", "torch_pipeline_img_s", "onnx_ceiling_img_s", "onnx_pipeline_img_s")


def test_predict_bench_prints_every_figure_and_the_ratios(tmp_path):
    root = ensure_synthetic_dataset(tmp_path / "chest_xray", seed=7, n_train=N_IMAGES, n_val=0, n_test=0,
                                    min_side=96, max_side=160)
    run = _python("-c", BLOCKED_RUN, "--predict", str(N_IMAGES), "--data-root", str(root), "--image-size", "64",
                  "--batch-size", "8", "--workers", "2", "--ceiling-seconds", "0.3", "--device", "cpu")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 1, run.stdout[-3000:]  # the bulk runs' own messages go to stderr
    result = json.loads(lines[0])
    for key in RATES:
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    for runtime in ("torch", "onnx"):
        bound = min(result["decode_img_s"], result[f"{runtime}_ceiling_img_s"])
        assert result[f"{runtime}_over_bound"] == pytest.approx(result[f"{runtime}_pipeline_img_s"] / bound, rel=1e-6)
    assert result["onnx_over_torch_ceiling"] == pytest.approx(
        result["onnx_ceiling_img_s"] / result["torch_ceiling_img_s"], rel=1e-6)
    assert (result["n_images"], result["image_size"], result["batch_size"], result["workers"]) == (N_IMAGES, 64, 8, 2)
    assert "onnx: ceiling" in run.stderr and "target >= 0.8" in run.stderr


def test_predict_bench_options():
    assert parse_args(["--predict"]).predict == 10000
    assert parse_args(["--predict", "300"]).predict == 300
    with pytest.raises(SystemExit):
        parse_args(["--predict", "30", "--table", "100"])
