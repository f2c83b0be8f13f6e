"""Clinical evaluation metrics for the binary pneumonia classifier.

Conventions used throughout this module:

* ``y_true`` holds 0/1 labels, where 1 = PNEUMONIA (the positive class) and
  0 = NORMAL.
* ``y_prob`` holds the predicted probability of PNEUMONIA, in ``[0, 1]``.
* A sample is predicted positive when ``y_prob >= threshold``. Every function
  here uses that same rule, so a threshold picked by :func:`pneumo.evaluation.thresholds.choose_threshold`
  reproduces exactly the operating point it was picked for.
* Undefined ratios (0/0, e.g. PPV when nothing is predicted positive) are
  NaN in the numeric functions instead of raising or silently becoming 0; the
  report (:func:`clinical_report`) turns them into ``null`` with a one-line
  reason (see :mod:`pneumo.evaluation.definedness`), so a degenerate set or
  operating point is visible in the report and metrics.json stays valid JSON.

Everything is plain numpy. The metric computations work on 2-D arrays of shape
``(n_rows, n_samples)`` so that the same code path serves the point estimate
(one row) and the bootstrap (one row per resample). This keeps the point
estimate and its confidence interval consistent by construction and makes
1,000 bootstrap resamples cost a handful of vectorised operations.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from pneumo.evaluation.definedness import bootstrap_notes, metric_entry, undefined_reason

#: Keys returned by :func:`binary_metrics`, in report order.
METRIC_KEYS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
                               "auroc", "auprc", "brier", "ece")

#: Keys of :data:`METRIC_KEYS` that do not depend on the operating threshold.
THRESHOLD_FREE_KEYS: tuple[str, ...] = ("auroc", "auprc", "brier", "ece")



# --------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------
def _validate(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(y_true, y_prob)`` as flat int/float arrays, or raise.

    Validation lives in one place so every public function fails the same way
    on bad input instead of producing silently wrong numbers.
    """
    y = np.asarray(y_true).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(
            f"y_true and y_prob must have the same length, got {y.size} and {p.size}"
        )
    if y.size == 0:
        raise ValueError("y_true and y_prob must not be empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 (NORMAL) and 1 (PNEUMONIA)")
    if not np.isfinite(p).all():
        raise ValueError("y_prob must be finite (no NaN or inf)")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("y_prob must be probabilities in [0, 1]")
    return y.astype(np.int64), p


def _require_both_classes(y: np.ndarray, what: str) -> None:
    """Raise a clear error when only one class is present.

    Threshold selection is meaningless without both classes (sensitivity or
    specificity would be 0/0 at every threshold). The bootstrap and the
    report do not need this: they report what a one-class set defines.
    """
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "PNEUMONIA (1)" if n_pos else "NORMAL (0)"
        raise ValueError(
            f"{what} needs both classes in y_true, but it only contains {only}"
        )


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise ``num / den`` with NaN where ``den == 0`` (undefined ratio)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


# --------------------------------------------------------------------------
# Confusion counts
# --------------------------------------------------------------------------
def confusion_counts(y_true: Any, y_pred: Any) -> dict[str, int]:
    """Count tp/fp/tn/fn for hard 0/1 predictions (1 = PNEUMONIA)."""
    y = np.asarray(y_true).ravel().astype(bool)
    pred = np.asarray(y_pred).ravel().astype(bool)
    if y.shape != pred.shape:
        raise ValueError("y_true and y_pred must have the same length")
    return {
        "tp": int(np.sum(pred & y)),
        "fp": int(np.sum(pred & ~y)),
        "tn": int(np.sum(~pred & ~y)),
        "fn": int(np.sum(~pred & y)),
    }


# --------------------------------------------------------------------------
# Row-wise (vectorised) metric kernels
# --------------------------------------------------------------------------
def rowwise_auroc_auprc(
    y_rows: np.ndarray, p_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision for every row of 2-D arrays at once.

    Why row-wise: the bootstrap needs these two ranking metrics for 1,000
    resamples; one batched sort is far cheaper than 1,000 calls to sklearn.

    * AUROC is the Mann-Whitney U statistic divided by ``n_pos * n_neg``,
      using average ranks for tied scores (a tie counts as half a win), which
      is exactly what ``sklearn.metrics.roc_auc_score`` computes.
    * AUPRC is average precision as in
      ``sklearn.metrics.average_precision_score``:
      ``AP = sum_k (R_k - R_{k-1}) * P_k`` over distinct score thresholds,
      i.e. each positive contributes ``precision / n_pos`` at the threshold
      equal to its own score (ties share one threshold).

    Rows with a single class give NaN for AUROC (and NaN for AUPRC when they
    contain no positive).
    """
    y_rows = np.atleast_2d(np.asarray(y_rows)).astype(bool)
    p_rows = np.atleast_2d(np.asarray(p_rows, dtype=np.float64))
    n_rows, n = p_rows.shape
    order = np.argsort(p_rows, axis=1, kind="stable")
    s = np.take_along_axis(p_rows, order, axis=1)  # ascending scores
    y = np.take_along_axis(y_rows, order, axis=1)
    col = np.broadcast_to(np.arange(n), (n_rows, n))

    # Tie groups: first and last sorted position of each run of equal scores.
    new_group = np.ones((n_rows, n), dtype=bool)
    new_group[:, 1:] = s[:, 1:] != s[:, :-1]
    end_group = np.ones((n_rows, n), dtype=bool)
    end_group[:, :-1] = new_group[:, 1:]
    first = np.maximum.accumulate(np.where(new_group, col, 0), axis=1)
    last = np.minimum.accumulate(np.where(end_group, col, n - 1)[:, ::-1], axis=1)[:, ::-1]

    n_pos = y.sum(axis=1).astype(np.float64)
    n_neg = n - n_pos

    # AUROC via average ranks (1-based).
    avg_rank = (first + last) / 2.0 + 1.0
    rank_sum = np.where(y, avg_rank, 0.0).sum(axis=1)
    u_stat = rank_sum - n_pos * (n_pos + 1) / 2.0
    auroc = _safe_div(u_stat, n_pos * n_neg)

    # Average precision. At the threshold equal to sample i's score, the
    # predicted positives are every sample from its group's first position
    # up (n - first), and the true positives are the positives among them.
    pos_before = np.cumsum(y, axis=1) - y  # positives strictly before j
    tp_at = n_pos[:, None] - np.take_along_axis(pos_before, first, axis=1)
    precision_at = tp_at / (n - first)
    auprc = _safe_div(np.where(y, precision_at, 0.0).sum(axis=1), n_pos)
    return auroc, auprc


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability: [0, 1/n), ..., [(n-1)/n, 1]."""
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def _rowwise_ece(y_rows: np.ndarray, p_rows: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE for every row with one ``bincount`` (see :func:`expected_calibration_error`)."""
    n_rows, n = p_rows.shape
    flat = (np.arange(n_rows)[:, None] * n_bins + _bin_index(p_rows, n_bins)).ravel()
    size = n_rows * n_bins
    sum_p = np.bincount(flat, weights=p_rows.ravel(), minlength=size)
    sum_y = np.bincount(flat, weights=y_rows.ravel().astype(np.float64), minlength=size)
    # (n_b / n) * |mean_y_b - mean_p_b|  ==  |sum_y_b - sum_p_b| / n
    return np.abs(sum_y - sum_p).reshape(n_rows, n_bins).sum(axis=1) / n


def _rowwise_metrics(
    y_rows: np.ndarray, p_rows: np.ndarray, threshold: float, n_bins: int = 10
) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRIC_KEYS` for each row, as 1-D arrays."""
    y = np.atleast_2d(y_rows).astype(bool)
    p = np.atleast_2d(np.asarray(p_rows, dtype=np.float64))
    n = p.shape[1]
    pred = p >= threshold
    tp = np.sum(pred & y, axis=1)
    fp = np.sum(pred & ~y, axis=1)
    tn = np.sum(~pred & ~y, axis=1)
    fn = np.sum(~pred & y, axis=1)

    sensitivity = _safe_div(tp, tp + fn)
    specificity = _safe_div(tn, tn + fp)
    auroc, auprc = rowwise_auroc_auprc(y, p)
    return {
        "accuracy": _safe_div(tp + tn, np.full(tp.shape, n)),
        # NaN when a class is absent: balanced accuracy is undefined then.
        "balanced_accuracy": (sensitivity + specificity) / 2.0,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _safe_div(tp, tp + fp),
        "npv": _safe_div(tn, tn + fn),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "auroc": auroc,
        "auprc": auprc,
        "brier": np.mean((p - y) ** 2, axis=1),
        "ece": _rowwise_ece(y, p, n_bins),
    }


# --------------------------------------------------------------------------
# Point estimates
# --------------------------------------------------------------------------
def reliability_bins(y_true: Any, y_prob: Any, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per-bin calibration statistics for a reliability diagram.

    Bins are equal-width over [0, 1]: ``[0, 1/n), [1/n, 2/n), ...,
    [(n-1)/n, 1]`` (the last bin includes 1.0). Returns ``edges`` (n+1),
    ``counts``, ``mean_pred`` (mean predicted probability) and ``frac_pos``
    (observed fraction of PNEUMONIA); the last two are NaN for empty bins.
    """
    y, p = _validate(y_true, y_prob)
    idx = _bin_index(p, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "counts": counts,
        "mean_pred": _safe_div(sum_p, counts),
        "frac_pos": _safe_div(sum_y, counts),
    }


def expected_calibration_error(y_true: Any, y_prob: Any, n_bins: int = 10) -> float:
    """Expected calibration error (ECE) of the PNEUMONIA probability.

    Definition: split [0, 1] into ``n_bins`` equal-width bins (see
    :func:`reliability_bins`); in each non-empty bin b compare the observed
    fraction of positives with the mean predicted probability, and average
    the absolute gaps weighted by the share of samples in the bin::

        ECE = sum_b (n_b / n) * |mean(y_true in b) - mean(y_prob in b)|

    0 means perfectly calibrated; it is "top-label-free" (computed on the
    positive-class probability only), which is the natural choice for a
    binary screening score.
    """
    y, p = _validate(y_true, y_prob)
    return float(_rowwise_ece(y[None, :], p[None, :], n_bins)[0])


def binary_metrics(y_true: Any, y_prob: Any, threshold: float) -> dict[str, float]:
    """Point estimates of all clinical metrics at ``threshold``.

    Keys are :data:`METRIC_KEYS`. Threshold metrics use ``y_prob >= threshold``
    as the PNEUMONIA prediction; AUROC/AUPRC/Brier/ECE are threshold-free.
    ``ece`` uses 10 equal-width bins (see :func:`expected_calibration_error`).
    Undefined ratios are NaN.
    """
    y, p = _validate(y_true, y_prob)
    rows = _rowwise_metrics(y[None, :], p[None, :], float(threshold))
    return {key: float(rows[key][0]) for key in METRIC_KEYS}


# --------------------------------------------------------------------------
# Bootstrap confidence intervals
# --------------------------------------------------------------------------
def stratified_bootstrap_indices(y_true: Any, n_resamples: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Index matrix of shape ``(n_resamples, n)`` (int64) for a stratified bootstrap.

    Positives and negatives are resampled separately, each with its own
    count, so every resample keeps the original class balance and has both
    classes whenever the set has (AUROC and sensitivity/specificity stay
    defined). Within a row, the positive draws come first, then the negative
    draws. A set with one class resamples that class alone; a class with one
    image is that image in every row.
    """
    y = np.asarray(y_true).ravel()
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    draws = []
    for members in (np.flatnonzero(y == 1), np.flatnonzero(y == 0)):
        if members.size:  # an absent class contributes no columns (and draws nothing)
            draws.append(members[rng.integers(0, members.size, size=(n_resamples, members.size))])
    if not draws:
        return np.zeros((n_resamples, 0), dtype=np.int64)
    return np.concatenate(draws, axis=1).astype(np.int64)


def bootstrap_distribution(y_true: Any, y_prob: Any, threshold: float, n_resamples: int = 1000,
                           seed: int = 0) -> dict[str, np.ndarray]:
    """Each metric over ``n_resamples`` stratified bootstrap resamples: key -> float array (n_resamples,).

    The threshold is held fixed (it was chosen on validation data), so the
    interval reflects test-set sampling variability only. A one-class set is
    resampled within its class; metrics that need the absent class are NaN
    in every resample. Raises ValueError on invalid input or n_resamples < 1.
    """
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    y, p = _validate(y_true, y_prob)
    idx = stratified_bootstrap_indices(y, n_resamples, seed)
    return _rowwise_metrics(y[idx], p[idx], float(threshold))


def bootstrap_ci(y_true: Any, y_prob: Any, threshold: float, n_resamples: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap ``(1 - alpha)`` intervals for every metric.

    Stratified resampling (see :func:`stratified_bootstrap_indices`), fully
    vectorised across resamples. Resamples where a metric is undefined (NaN,
    e.g. PPV with no positive prediction) are ignored by the percentile; a
    metric undefined in every resample (e.g. AUROC on a one-class set) gets
    ``(nan, nan)``. Percentile method: Efron & Tibshirani, *An Introduction
    to the Bootstrap* (1993), ch. 13. Raises ValueError unless 0 < alpha < 1.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    dist = bootstrap_distribution(y_true, y_prob, threshold, n_resamples, seed)
    q = [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)]
    out: dict[str, tuple[float, float]] = {}
    with warnings.catch_warnings():
        # all-NaN metric (always undefined) -> NaN interval, without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        for key in METRIC_KEYS:
            lo, hi = np.nanpercentile(dist[key], q)
            out[key] = (float(lo), float(hi))
    return out


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
def defined_metrics(y_true: Any, y_prob: Any, threshold: float) -> dict[str, float | None]:
    """:func:`binary_metrics` with ``None`` for every metric not defined on the set.

    Which are not defined, and why, is :func:`undefined_reasons`; e.g. on a
    set of PNEUMONIA only, specificity, balanced accuracy, AUROC and AUPRC.
    """
    point = binary_metrics(y_true, y_prob, threshold)
    reasons = undefined_reasons(y_true, y_prob, threshold)
    return {key: None if key in reasons or not np.isfinite(point[key]) else point[key] for key in METRIC_KEYS}


def undefined_reasons(y_true: Any, y_prob: Any, threshold: float) -> dict[str, str]:
    """Metric key -> one-line reason, for each metric not defined on the set at ``threshold``.

    The rules are :func:`pneumo.evaluation.definedness.undefined_reason`'s,
    e.g. ``{"specificity": "only PNEUMONIA in this set", ...}``; empty on a
    set with both classes and images on both sides of the threshold.
    """
    y, p = _validate(y_true, y_prob)
    counts = confusion_counts(y, p >= threshold)
    reasons = {key: undefined_reason(key, counts, float(threshold)) for key in METRIC_KEYS}
    return {key: reason for key, reason in reasons.items() if reason is not None}


def clinical_report(y_true: Any, y_prob: Any, threshold: float, policy: str, n_resamples: int = 1000,
                    seed: int = 0) -> dict[str, Any]:
    """Build the JSON-serialisable ``metrics.json`` payload, for any labelled set.

    Schema::

        {"threshold": {"policy": str, "value": float},
         "n": {"total": int, "positive": int, "negative": int},
         "metrics": {<key>: {"value": float, "ci95": [lo, hi]}, ...},
         "confusion_matrix": {"tp": int, "fp": int, "tn": int, "fn": int},
         "notes": [str, ...]}

    A metric not defined on the set (one class only, nothing predicted
    positive, ...) is ``{"value": None, "ci95": None, "reason": str}``; a
    defined one the bootstrap cannot give an interval (a single image) is
    ``{"value": float, "ci95": None, "ci_reason": str}``; see
    :func:`pneumo.evaluation.definedness.metric_entry`. ``notes`` says how the
    bootstrap met a missing or single-image class. Only plain Python types:
    ``json.dumps`` gives valid JSON (no NaN token). Raises ValueError on
    invalid input (see :func:`binary_metrics`).
    """
    y, p = _validate(y_true, y_prob)
    threshold = float(threshold)
    point = binary_metrics(y, p, threshold)
    ci = bootstrap_ci(y, p, threshold, n_resamples=n_resamples, seed=seed, alpha=0.05)
    counts = confusion_counts(y, p >= threshold)
    n_pos = int(y.sum())
    return {
        "threshold": {"policy": str(policy), "value": threshold},
        "n": {"total": int(y.size), "positive": n_pos, "negative": int(y.size) - n_pos},
        "metrics": {key: metric_entry(key, point[key], ci[key], counts, threshold) for key in METRIC_KEYS},
        "confusion_matrix": counts,
        "notes": bootstrap_notes(n_pos, int(y.size) - n_pos),
    }


__all__ = ["METRIC_KEYS", "THRESHOLD_FREE_KEYS", "binary_metrics", "bootstrap_ci", "bootstrap_distribution",
           "clinical_report", "confusion_counts", "defined_metrics", "expected_calibration_error", "reliability_bins",
           "rowwise_auroc_auprc", "stratified_bootstrap_indices", "undefined_reasons"]
