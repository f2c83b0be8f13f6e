"""Temperature scaling (Guo et al. 2017): fitted T, held-out ECE, unchanged ranking, refusals, and its use
in the module, the served model and the report."""
import numpy as np
import pytest
import torch

from pneumo.evaluation.calibration import (apply_temperature, calibration_record, calibration_report,
                                           checkpoint_temperature, fit_temperature, nll, T_BOUNDS)
from pneumo.evaluation.metrics import binary_metrics, expected_calibration_error
from pneumo.evaluation.report_text import calibration_lines


def _calibrated_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z): z are the true, calibrated logits."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    return (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int), z


def test_over_confident_logits_get_t_near_4_and_held_out_ece_falls_with_auroc_unchanged():
    labels, z = _calibrated_set(20_000, seed=0)
    logits = 4.0 * z  # an over-confident model: the true logits scaled by 4
    fit, held = slice(0, 10_000), slice(10_000, None)
    t = fit_temperature(labels[fit], logits[fit])
    assert t == pytest.approx(4.0, rel=0.10)
    assert nll(labels[fit], logits[fit], t) < nll(labels[fit], logits[fit], 1.0)
    before, after = apply_temperature(logits[held], 1.0), apply_temperature(logits[held], t)
    ece_before = expected_calibration_error(labels[held], before)
    ece_after = expected_calibration_error(labels[held], after)
    assert ece_before > 0.10 and ece_after < 0.03, (ece_before, ece_after)
    assert ece_after < ece_before / 4
    auroc_before = binary_metrics(labels[held], before, 0.5)["auroc"]
    auroc_after = binary_metrics(labels[held], after, 0.5)["auroc"]
    assert abs(auroc_before - auroc_after) < 1e-12 and 0.7 < auroc_after < 1.0


def test_an_already_calibrated_set_keeps_t_near_1():
    labels, z = _calibrated_set(20_000, seed=1)
    assert fit_temperature(labels, z) == pytest.approx(1.0, abs=0.08)


def test_under_confident_logits_get_t_below_1():
    labels, z = _calibrated_set(20_000, seed=2)
    assert fit_temperature(labels, z / 2) == pytest.approx(0.5, rel=0.10)


@pytest.mark.parametrize("labels, logits, message", [
    ([], [], "at least one labelled image"),
    ([1, 1, 1], [0.2, 1.0, 3.0], "needs both classes"),
    ([0, 0], [0.2, -1.0], "needs both classes"),
    ([0, 1], [0.2], "one logit per label"),
    ([0, 1], [0.2, float("nan")], "finite logits"),
    ([0, 2], [0.2, 0.3], "must be 0"),
])
def test_fit_refuses_input_it_cannot_fit(labels, logits, message):
    with pytest.raises(ValueError, match=message):
        fit_temperature(labels, logits)


def test_records_and_checkpoint_temperature():
    labels, z = _calibrated_set(2_000, seed=3)
    record = calibration_record(labels, 3 * z, "temperature")
    assert record["method"] == "temperature" and record["fitted_on"] == "validation"
    assert record["n_images"] == 2_000 and record["temperature"] == pytest.approx(3.0, rel=0.2)
    assert checkpoint_temperature({"calibration": record}) == record["temperature"]
    assert calibration_record(labels, z, "none") == {"method": "none"}
    assert checkpoint_temperature({"calibration": {"method": "none"}}) == 1.0
    assert checkpoint_temperature({"threshold": {"value": 0.5}}) == 1.0  # a checkpoint from before calibration
    one_class = calibration_record([1, 1], [0.3, 2.0], "temperature")
    assert one_class["method"] == "none" and "one class" in one_class["note"]
    with pytest.raises(ValueError, match="not known"):
        calibration_record(labels, z, "platt")
    with pytest.raises(ValueError, match="> 0"):
        apply_temperature(z, 0.0)


def test_report_gives_ece_and_brier_before_and_after_with_intervals():
    labels, z = _calibrated_set(600, seed=4)
    logits = 4.0 * z
    record = calibration_record(labels[:300], logits[:300], "temperature")
    report = calibration_report(labels[300:], logits[300:], record, n_resamples=200, seed=0)
    assert report["temperature"] == record["temperature"] and report["method"] == "temperature"
    for key in ("ece", "brier"):
        before, after = report[f"{key}_before"], report[f"{key}_after"]
        assert after["value"] < before["value"], key
        for entry in (before, after):
            low, high = entry["ci95"]
            assert low <= entry["value"] <= high and low < high
    assert report["brier_before"]["value"] == pytest.approx(np.mean((apply_temperature(logits[300:], 1) -
                                                                     labels[300:]) ** 2))
    text = "\n".join(calibration_lines({"calibration": report}))
    assert f"T = {record['temperature']:.3f}" in text
    assert "ECE before" in text and "ECE after" in text and "Brier score after" in text
    uncalibrated = calibration_report(labels, logits, {"method": "none"}, n_resamples=50)
    assert uncalibrated["temperature"] == 1.0
    assert uncalibrated["ece_before"]["value"] == uncalibrated["ece_after"]["value"]


def test_module_fits_t_on_validation_logits_and_chooses_the_threshold_on_calibrated_probabilities():
    from pneumo.models.seed_cnn import SeedCNN
    from pneumo.training.module import PneumoniaClassifier

    labels, z = _calibrated_set(4_000, seed=5)
    logits = torch.tensor(4.0 * z, dtype=torch.float32)
    module = PneumoniaClassifier(SeedCNN(32), optimizer=None, threshold_policy="youden")
    module.on_validation_epoch_start()
    module._scores["val"].append((torch.tensor(labels), logits))
    logged = {}
    module.log_dict = lambda values, **_: logged.update(values)
    module.on_validation_epoch_end()
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    stored = checkpoint["pneumo"]["calibration"]
    assert stored["method"] == "temperature" and stored["n_images"] == 4_000
    assert stored["temperature"] == pytest.approx(4.0, rel=0.1) == logged["val/temperature"]
    # The validation probabilities, threshold and figures are the calibrated ones.
    expected = apply_temperature(logits.numpy(), stored["temperature"])
    np.testing.assert_allclose(module.val_scores[1].numpy(), expected, rtol=1e-6)
    assert logged["val/ece"] == pytest.approx(expected_calibration_error(labels, expected))
    x = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    module.eval()  # no dropout: the same logits twice
    raw = module(module.preprocess(x, train=False)).float()
    torch.testing.assert_close(module.predict_step((module.preprocess(x, train=False), None), 0),
                               torch.sigmoid(raw / stored["temperature"]))

    off = PneumoniaClassifier(SeedCNN(32), optimizer=None, calibration="none")
    off.on_validation_epoch_start()
    off._scores["val"].append((torch.tensor(labels), logits))
    off.log_dict = lambda values, **_: None
    off.on_validation_epoch_end()
    off.on_save_checkpoint(checkpoint)
    assert checkpoint["pneumo"]["calibration"] == {"method": "none"} and off.temperature == 1.0
    np.testing.assert_allclose(off.val_scores[1].numpy(), apply_temperature(logits.numpy(), 1.0), rtol=1e-6)
    with pytest.raises(ValueError, match="calibration=platt"):
        PneumoniaClassifier(SeedCNN(32), optimizer=None, calibration="platt")


# The served model's sigmoid(logit / T): tests/deploy/test_mlflow_model.py (the pyfunc model on a trained run).


def test_reliability_diagram_draws_before_and_after(tmp_path):
    from pneumo.evaluation.plots import plot_reliability

    labels, z = _calibrated_set(500, seed=6)
    path = plot_reliability(labels, apply_temperature(4 * z, 4.0), tmp_path / "reliability.png",
                            probs_before=apply_temperature(4 * z, 1.0))
    assert path.is_file() and path.stat().st_size > 10_000
    with pytest.raises(ValueError):
        plot_reliability(labels, apply_temperature(z, 1.0), tmp_path / "bad.png", probs_before=z[:10])
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # the refused input left no open figure


def test_a_perfectly_separated_validation_set_is_left_uncalibrated():
    """Separable scores drive T to its lower bound, where sigmoid(z / T) rounds to exactly 0 or 1 and ties
    the images: such a fit is not used, so the held-out ranking (AUROC) stays the model's."""
    rng = np.random.default_rng(3)
    val_labels = np.r_[np.zeros(40), np.ones(40)]
    val_logits = np.r_[rng.uniform(-3, -0.5, 40), rng.uniform(0.5, 3, 40)]  # no overlap
    assert fit_temperature(val_labels, val_logits) < T_BOUNDS[0] * 1.05  # the fit runs to the bound
    record = calibration_record(val_labels, val_logits, "temperature")
    assert record["method"] == "none" and "not identifiable" in record["note"]
    assert checkpoint_temperature({"calibration": record}) == 1.0
    test_labels = np.r_[np.zeros(200), np.ones(200)]
    test_logits = np.r_[rng.normal(-1, 1.5, 200), rng.normal(1, 1.5, 200)]
    raw = binary_metrics(test_labels.astype(int), apply_temperature(test_logits, 1.0), 0.5)["auroc"]
    at_bound = binary_metrics(test_labels.astype(int), apply_temperature(test_logits, T_BOUNDS[0]), 0.5)["auroc"]
    assert at_bound < raw - 0.01  # what using the bound would have cost
