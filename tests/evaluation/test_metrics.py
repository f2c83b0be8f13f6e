"""Tests for pneumo.evaluation.metrics: every number is checked against scikit-learn or a
hand computation written out below, so a regression in any metric fails."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from pneumo.evaluation.metrics import (binary_metrics, bootstrap_ci, bootstrap_distribution, clinical_report, confusion_counts, expected_calibration_error, METRIC_KEYS, reliability_bins, rowwise_auroc_auprc, stratified_bootstrap_indices)
from pneumo.evaluation.thresholds import choose_threshold

# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------
# Small hand example: 4 NORMAL then 6 PNEUMONIA.
Y_SMALL = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P_SMALL = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.6, 0.55, 0.3, 0.7, 0.45])


def _synthetic(n_pos: int = 390, n_neg: int = 234, seed: int = 1, decimals: int = 2):
    """Test-set-sized scores (624 like the Kermany test split), rounded -> ties."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]
    p = np.clip(rng.normal(0.35 + 0.35 * y, 0.2), 0.0, 1.0).round(decimals)
    return y, p


# --------------------------------------------------------------------------
# Confusion counts and point metrics
# --------------------------------------------------------------------------
def test_confusion_counts_hand_example() -> None:
    # at 0.5: negatives predict 0,0,0,1; positives predict 1,1,1,0,1,0
    assert confusion_counts(Y_SMALL, P_SMALL >= 0.5) == {"tp": 4, "fp": 1, "tn": 3, "fn": 2}


def test_binary_metrics_hand_example() -> None:
    m = binary_metrics(Y_SMALL, P_SMALL, 0.5)
    assert list(m) == list(METRIC_KEYS)
    expected = {
        "accuracy": 7 / 10,
        "sensitivity": 4 / 6,
        "specificity": 3 / 4,
        "balanced_accuracy": (4 / 6 + 3 / 4) / 2,  # 17/24
        "ppv": 4 / 5,
        "npv": 3 / 5,
        "f1": 8 / 11,  # 2tp / (2tp + fp + fn)
        "auroc": 17 / 24,  # positive-over-negative wins: 4+3+3+1+3+3
        # precision at each positive in descending score order:
        # 1/1, 2/3, 3/4, 4/5, 5/6, 6/9  -> mean = 283/360
        "auprc": 283 / 360,
        # squared errors: 0.01+0.16+0.1225+0.64 + 0.01+0.16+0.2025+0.49+0.09+0.3025
        "brier": 2.1875 / 10,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key


def test_binary_metrics_match_sklearn() -> None:
    y, p = _synthetic(seed=7)
    for t in (0.3, 0.5, 0.62):
        pred = (p >= t).astype(int)
        m = binary_metrics(y, p, t)
        assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert m["sensitivity"] == pytest.approx(recall_score(y, pred, pos_label=1))
        assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
        assert m["ppv"] == pytest.approx(precision_score(y, pred, pos_label=1))
        assert m["npv"] == pytest.approx(precision_score(y, pred, pos_label=0))
        assert m["f1"] == pytest.approx(f1_score(y, pred))
        assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
        assert m["auprc"] == pytest.approx(average_precision_score(y, p))
        assert m["brier"] == pytest.approx(brier_score_loss(y, p))


def test_undefined_ratios_are_nan() -> None:
    # Threshold above every score: nothing predicted positive -> PPV is 0/0.
    m = binary_metrics(Y_SMALL, P_SMALL, 0.95)
    assert math.isnan(m["ppv"])
    assert m["sensitivity"] == 0.0
    assert m["f1"] == 0.0  # 0 / (0 + 0 + 6): defined, just zero
    assert m["npv"] == pytest.approx(4 / 10)

    # Only NORMAL cases, all predicted NORMAL: sensitivity, PPV, F1, AUROC,
    # AUPRC and balanced accuracy are undefined; the rest is defined.
    y = np.zeros(5, dtype=int)
    p = np.array([0.1, 0.2, 0.3, 0.2, 0.1])
    m = binary_metrics(y, p, 0.5)
    for key in ("sensitivity", "ppv", "f1", "auroc", "auprc",
                "balanced_accuracy"):
        assert math.isnan(m[key]), key
    assert m["specificity"] == 1.0
    assert m["npv"] == 1.0
    assert m["accuracy"] == 1.0


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="same length"):
        binary_metrics([0, 1], [0.5], 0.5)
    with pytest.raises(ValueError, match="0 .*1"):
        binary_metrics([0, 2], [0.5, 0.5], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binary_metrics([0, 1], [0.5, 1.5], 0.5)


# --------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------
def test_ece_hand_example() -> None:
    y = np.array([0, 1, 0, 1, 1, 0])
    p = np.array([0.15, 0.15, 0.25, 0.85, 0.85, 0.95])
    # bin [0.1,0.2): 2 samples, |0.5 - 0.15| = 0.35
    # bin [0.2,0.3): 1 sample,  |0.0 - 0.25| = 0.25
    # bin [0.8,0.9): 2 samples, |1.0 - 0.85| = 0.15
    # bin [0.9,1.0]: 1 sample,  |0.0 - 0.95| = 0.95
    expected = (2 * 0.35 + 1 * 0.25 + 2 * 0.15 + 1 * 0.95) / 6  # = 0.3667
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    assert binary_metrics(y, p, 0.5)["ece"] == pytest.approx(expected)

    bins = reliability_bins(y, p)
    assert bins["counts"].tolist() == [0, 2, 1, 0, 0, 0, 0, 0, 2, 1]
    assert bins["frac_pos"][1] == pytest.approx(0.5)
    assert bins["mean_pred"][8] == pytest.approx(0.85)
    assert math.isnan(bins["frac_pos"][0])  # empty bin


def test_ece_edges_and_perfect_calibration() -> None:
    # p = 0 falls in the first bin and p = 1 in the last (closed) bin.
    bins = reliability_bins([0, 1], [0.0, 1.0])
    assert bins["counts"][0] == 1 and bins["counts"][-1] == 1
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    # Half positives, all scored 0.5: calibrated within the bin.
    assert expected_calibration_error([0, 1, 1, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.0)


# --------------------------------------------------------------------------
# Threshold policies
# --------------------------------------------------------------------------
def _policy_scores() -> tuple[np.ndarray, np.ndarray]:
    """20 positives / 20 negatives where Youden and sensitivity@0.95 differ.

    Positives: 17 at 0.60..0.92 plus 0.40, 0.30, 0.20.
    Negatives: 0.50, 0.45, 0.35, 0.25 plus 16 below 0.1.
    Youden J by threshold: 0.60 -> 17/20 - 0/20 = 0.85 (unique max);
    0.40 -> 0.90 - 0.10 = 0.80; 0.30 -> 0.95 - 0.15 = 0.80; 0.20 -> 1 - 0.2 = 0.8.
    Sensitivity >= 0.95 needs 19 positives -> highest such threshold is 0.30.
    """
    pos = np.r_[np.round(0.60 + 0.02 * np.arange(17), 2), 0.40, 0.30, 0.20]
    neg = np.r_[0.50, 0.45, 0.35, 0.25, np.round(0.005 * np.arange(16), 3)]
    y = np.r_[np.ones(20, dtype=int), np.zeros(20, dtype=int)]
    return y, np.r_[pos, neg]


def test_threshold_policies_hand_example() -> None:
    y, p = _policy_scores()
    assert choose_threshold(y, p, "fixed") == 0.5
    t_youden = choose_threshold(y, p, "youden")
    t_sens = choose_threshold(y, p, "sensitivity", target_sensitivity=0.95)
    assert t_youden == pytest.approx(0.60)
    assert t_sens == pytest.approx(0.30)
    assert choose_threshold(y, p, "sensitivity", target_sensitivity=0.90) == pytest.approx(0.40)
    assert choose_threshold(y, p, "sensitivity", target_sensitivity=1.0) == pytest.approx(0.20)

    # y_prob >= t reproduces the chosen operating points.
    m = binary_metrics(y, p, t_youden)
    assert (m["sensitivity"], m["specificity"]) == (pytest.approx(0.85), pytest.approx(1.0))
    m = binary_metrics(y, p, t_sens)
    # 3 negatives (0.50, 0.45, 0.35) are >= 0.30 -> specificity 17/20
    assert (m["sensitivity"], m["specificity"]) == (pytest.approx(0.95), pytest.approx(0.85))


def test_youden_matches_sklearn_roc_curve() -> None:
    y, p = _synthetic(seed=3)
    fpr, tpr, thr = roc_curve(y, p)
    best = int(np.argmax(tpr - fpr))
    t = choose_threshold(y, p, "youden")
    assert t == pytest.approx(thr[best])
    m = binary_metrics(y, p, t)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(tpr[best] - fpr[best])


def test_sensitivity_policy_is_highest_threshold_reaching_target() -> None:
    y, p = _synthetic(seed=4)
    t = choose_threshold(y, p, "sensitivity", target_sensitivity=0.95)
    assert binary_metrics(y, p, t)["sensitivity"] >= 0.95
    higher = np.unique(p[p > t])
    assert higher.size > 0
    # The next distinct score above t already misses the target.
    assert binary_metrics(y, p, float(higher[0]))["sensitivity"] < 0.95


def test_threshold_errors() -> None:
    with pytest.raises(ValueError, match="fixed, youden, sensitivity"):
        choose_threshold(Y_SMALL, P_SMALL, "f1")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([1, 1, 1], [0.2, 0.5, 0.9], "youden")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([0, 0], [0.2, 0.5], "fixed")


# --------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------
def test_stratified_indices_keep_class_counts() -> None:
    y, _ = _synthetic(n_pos=37, n_neg=13)
    idx = stratified_bootstrap_indices(y, n_resamples=200, seed=5)
    assert idx.shape == (200, 50)
    assert idx.min() >= 0 and idx.max() < 50
    assert (y[idx].sum(axis=1) == 37).all()
    assert ((1 - y[idx]).sum(axis=1) == 13).all()
    # it does resample (with replacement), not just permute
    assert any(np.unique(row).size < 50 for row in idx)


def test_rowwise_auroc_auprc_match_sklearn_with_ties() -> None:
    y, p = _synthetic(n_pos=60, n_neg=40, decimals=1)  # coarse scores: many ties
    idx = stratified_bootstrap_indices(y, n_resamples=8, seed=11)
    auroc, auprc = rowwise_auroc_auprc(y[idx], p[idx])
    for r in range(idx.shape[0]):
        yr, pr = y[idx[r]], p[idx[r]]
        assert auroc[r] == pytest.approx(roc_auc_score(yr, pr), abs=1e-12)
        assert auprc[r] == pytest.approx(average_precision_score(yr, pr), abs=1e-12)
    # all-tied scores: AUROC is exactly 0.5, AP equals prevalence
    a, b = rowwise_auroc_auprc(np.array([[1, 0, 1, 0, 0]]), np.full((1, 5), 0.3))
    assert a[0] == 0.5 and b[0] == pytest.approx(0.4)


def test_bootstrap_distribution_matches_per_resample_metrics() -> None:
    y, p = _synthetic(n_pos=50, n_neg=30)
    dist = bootstrap_distribution(y, p, 0.5, n_resamples=5, seed=2)
    idx = stratified_bootstrap_indices(y, 5, seed=2)  # same seed -> same draws
    for r in range(5):
        m = binary_metrics(y[idx[r]], p[idx[r]], 0.5)
        for key in METRIC_KEYS:
            assert dist[key][r] == pytest.approx(m[key], abs=1e-12), key


def test_bootstrap_ci_contains_point_and_is_seeded() -> None:
    y, p = _synthetic()
    point = binary_metrics(y, p, 0.5)
    ci = bootstrap_ci(y, p, 0.5, n_resamples=500, seed=0)
    assert set(ci) == set(METRIC_KEYS)
    # ECE is excluded: its bootstrap is biased upward (noise adds miscalibration).
    for key in set(METRIC_KEYS) - {"ece"}:
        lo, hi = ci[key]
        assert lo < point[key] < hi, key
        assert hi - lo < 0.2, key  # a 624-sample CI is reasonably narrow
    assert ci == bootstrap_ci(y, p, 0.5, n_resamples=500, seed=0)
    assert ci != bootstrap_ci(y, p, 0.5, n_resamples=500, seed=1)


def test_bootstrap_ignores_nan_resamples() -> None:
    # At this threshold only one positive is predicted positive; resamples
    # that miss it have PPV = 0/0, which must be ignored, not propagated.
    y = np.r_[np.ones(10, dtype=int), np.zeros(10, dtype=int)]
    p = np.r_[0.99, np.full(9, 0.4), np.full(10, 0.1)]
    dist = bootstrap_distribution(y, p, 0.9, n_resamples=300, seed=0)
    assert np.isnan(dist["ppv"]).any()
    lo, hi = bootstrap_ci(y, p, 0.9, n_resamples=300, seed=0)["ppv"]
    assert lo == 1.0 and hi == 1.0


def test_bootstrap_of_one_class_resamples_that_class_alone() -> None:
    y, p = np.ones(5, dtype=int), np.array([0.2, 0.5, 0.9, 0.7, 0.6])
    idx = stratified_bootstrap_indices(y, n_resamples=50, seed=0)
    assert idx.shape == (50, 5) and idx.min() >= 0 and idx.max() < 5
    ci = bootstrap_ci(y, p, 0.5, n_resamples=300, seed=0)
    lo, hi = ci["sensitivity"]
    assert 0.0 <= lo < 0.8 < hi <= 1.0  # 4/5 caught: the resamples vary
    assert all(math.isnan(v) for v in ci["specificity"] + ci["auroc"])  # need NORMAL in every resample
    zeros = stratified_bootstrap_indices(np.zeros(4, dtype=int), n_resamples=3, seed=0)
    assert zeros.shape == (3, 4) and zeros.max() < 4


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
def test_clinical_report_schema() -> None:
    y, p = _synthetic(n_pos=80, n_neg=50)
    report = clinical_report(y, p, 0.5, "youden", n_resamples=200, seed=0)
    assert set(report) == {"threshold", "n", "metrics", "confusion_matrix", "notes"}
    assert report["notes"] == []  # both classes, each with many images
    assert report["threshold"] == {"policy": "youden", "value": 0.5}
    assert report["n"] == {"total": 130, "positive": 80, "negative": 50}
    assert set(report["metrics"]) == set(METRIC_KEYS)
    point = binary_metrics(y, p, 0.5)
    ci = bootstrap_ci(y, p, 0.5, n_resamples=200, seed=0)
    for key, entry in report["metrics"].items():
        assert set(entry) == {"value", "ci95"}
        assert type(entry["value"]) is float
        assert entry["value"] == point[key]
        assert [type(v) for v in entry["ci95"]] == [float, float]
        assert entry["ci95"] == list(ci[key])
    cm = report["confusion_matrix"]
    assert cm == confusion_counts(y, p >= 0.5)
    assert all(type(v) is int for v in cm.values())
    assert sum(cm.values()) == 130
    assert json.loads(json.dumps(report)) == report  # plain JSON types only


def test_clinical_report_writes_an_undefined_ratio_as_null_with_its_reason() -> None:
    # Threshold above every score: nothing is predicted PNEUMONIA, PPV is 0/0.
    report = clinical_report(Y_SMALL, P_SMALL, 0.95, "fixed", n_resamples=50)
    assert report["metrics"]["ppv"] == {"value": None, "ci95": None,
                                        "reason": "no image predicted PNEUMONIA at threshold 0.950"}
    assert report["metrics"]["sensitivity"]["value"] == 0.0
    text = json.dumps(report, allow_nan=False)  # raises on a NaN anywhere
    assert "NaN" not in text and json.loads(text) == report
