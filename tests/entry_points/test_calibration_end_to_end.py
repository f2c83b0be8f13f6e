"""Temperature scaling through the real entry points: train.py stores T with the checkpoint, evaluate.py
writes calibrated probabilities and reports ECE and Brier before and after; calibration=none turns it off."""
import csv
import json
import math

import numpy as np
import pytest
import torch

from tests.conftest import isolated_overrides, run_entry_point
from tests.entry_points.test_end_to_end import TINY_DATA


def _train_and_evaluate(tmp, *extra):
    result = run_entry_point("train.py", *TINY_DATA, *extra, *isolated_overrides(tmp))
    assert result.returncode == 0, result.stderr[-3000:]
    best = next((tmp / "run" / "checkpoints").glob("best-epoch*.ckpt"))
    out = tmp / "eval"
    overrides = [o for o in isolated_overrides(tmp) if not o.startswith("hydra.run.dir")]
    evaluated = run_entry_point("evaluate.py", f"ckpt={best}", *overrides, f"hydra.run.dir={out}",
                                "bootstrap.resamples=200", "gallery_size=0")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    return best, out, evaluated.stdout


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    return _train_and_evaluate(tmp_path_factory.mktemp("calibrated"), "trainer.max_epochs=2")


@pytest.fixture(scope="module")
def uncalibrated(tmp_path_factory):
    return _train_and_evaluate(tmp_path_factory.mktemp("uncalibrated"), "trainer.max_epochs=1", "calibration=none")


def _logits(checkpoint_path, files):
    """The trained module's raw logits for these image files, computed here from the checkpoint."""
    from omegaconf import OmegaConf

    from pneumo.data.datasets import ImageFiles
    from pneumo.models.checkpoints import load_checkpoint, load_weights
    from pneumo.models.factory import build_module

    checkpoint = load_checkpoint(checkpoint_path)
    cfg = OmegaConf.create(checkpoint["pneumo"]["config"])
    module = build_module(cfg, train=False)
    load_weights(module, checkpoint, checkpoint_path)
    module.eval()
    dataset = ImageFiles(files, cfg.data.image_size, cfg.data.channels, "auto")
    images = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(len(files))])
    with torch.no_grad():
        return module(module.preprocess(images, train=False)).double().numpy()


def _rows(out):
    with (out / "predictions.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_checkpoint_holds_the_temperature_and_evaluate_uses_it(calibrated):
    best, out, stdout = calibrated
    stored = torch.load(best, map_location="cpu", weights_only=True)["pneumo"]
    record = stored["calibration"]
    assert record["method"] == "temperature" and record["fitted_on"] == "validation"
    t = record["temperature"]
    assert 0.01 <= t <= 100 and math.isfinite(t) and record["n_images"] > 0
    report = json.loads((out / "metrics.json").read_text())
    calibration = report["calibration"]
    assert calibration["method"] == "temperature" and calibration["temperature"] == pytest.approx(t)
    for key in ("ece_before", "ece_after", "brier_before", "brier_after"):
        low, high = calibration[key]["ci95"]
        assert 0 <= low <= calibration[key]["value"] <= high <= 1, key
    # The headline metrics are the calibrated probabilities' figures.
    assert report["metrics"]["ece"]["value"] == pytest.approx(calibration["ece_after"]["value"])
    assert report["metrics"]["brier"]["value"] == pytest.approx(calibration["brier_after"]["value"])
    assert f"T = {t:.3f}" in stdout and "ECE before" in stdout and "ECE after" in stdout
    assert (out / "reliability.png").is_file()
    rows = _rows(out)[:5]
    logits = _logits(best, [row["path"] for row in rows])
    written = np.array([float(row["probability"]) for row in rows])
    np.testing.assert_allclose(written, 1 / (1 + np.exp(-logits / t)), atol=2e-6)
    if abs(t - 1) > 0.05:  # the uncalibrated probabilities would differ visibly
        assert np.abs(written - 1 / (1 + np.exp(-logits))).max() > 1e-4


def test_calibration_none_stores_no_temperature_and_reports_uncalibrated_values(uncalibrated):
    best, out, stdout = uncalibrated
    stored = torch.load(best, map_location="cpu", weights_only=True)["pneumo"]
    assert stored["calibration"] == {"method": "none"}
    calibration = json.loads((out / "metrics.json").read_text())["calibration"]
    assert calibration["method"] == "none" and calibration["temperature"] == 1.0
    assert calibration["ece_before"]["value"] == calibration["ece_after"]["value"]
    assert "Calibration: none" in stdout
    rows = _rows(out)[:5]
    logits = _logits(best, [row["path"] for row in rows])
    np.testing.assert_allclose([float(row["probability"]) for row in rows], 1 / (1 + np.exp(-logits)), atol=2e-6)
