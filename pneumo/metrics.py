"""Clinical evaluation metrics for the binary pneumonia classifier.

Conventions used throughout this module:

* ``y_true`` holds 0/1 labels, where 1 = PNEUMONIA (the positive class) and
  0 = NORMAL.
* ``y_prob`` holds the predicted probability of PNEUMONIA, in ``[0, 1]``.
* A sample is predicted positive when ``y_prob >= threshold``. Every function
  here uses that same rule, so a threshold picked by :func:`choose_threshold`
  reproduces exactly the operating point it was picked for.
* Undefined ratios (0/0, e.g. PPV when nothing is predicted positive) are
  reported as NaN instead of raising or silently becoming 0, so that a
  degenerate operating point is visible in the report.

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

#: Threshold policies accepted by :func:`choose_threshold`.
THRESHOLD_POLICIES: tuple[str, ...] = ("fixed", "youden", "sensitivity")

#: Keys returned by :func:`binary_metrics`, in report order.
METRIC_KEYS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "auroc",
    "auprc",
    "brier",
    "ece",
    "recall_normal",
    "recall_pneumonia",
)

# Tolerance when comparing a sensitivity count against target * n_positive,
# so that e.g. 19/20 counts as reaching a 0.95 target despite float rounding.
_COUNT_EPS = 1e-9


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

    Threshold selection and the stratified bootstrap are meaningless without
    both classes (sensitivity or specificity would be 0/0 everywhere).
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
# Confusion counts and threshold selection
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


def _roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(thresholds, tp, fp)`` for every distinct score, highest first.

    Each threshold is an actual score value, so ``p >= t`` reproduces exactly
    the counted operating point (no midpoints that could fall between ties).
    """
    thresholds = np.unique(p)[::-1]
    pos = np.sort(p[y == 1])
    neg = np.sort(p[y == 0])
    # number of scores >= t  ==  total - number of scores < t
    tp = pos.size - np.searchsorted(pos, thresholds, side="left")
    fp = neg.size - np.searchsorted(neg, thresholds, side="left")
    return thresholds, tp, fp


def choose_threshold(
    y_true: Any,
    y_prob: Any,
    policy: str,
    target_sensitivity: float = 0.95,
) -> float:
    """Pick a decision threshold on validation scores.

    Policies:

    * ``fixed``: 0.5, the naive default, kept as a reference point.
    * ``youden``: maximises Youden's J = sensitivity + specificity - 1 over
      the ROC thresholds (ties go to the highest threshold). Balances both
      error types when they are considered equally costly.
    * ``sensitivity``: the HIGHEST threshold whose sensitivity reaches
      ``target_sensitivity``. Screening use: missing pneumonia is worse than a
      false alarm, so fix the miss rate and keep specificity as high as that
      allows.

    The returned value is one of the scores in ``y_prob`` (or 0.5), and
    ``y_prob >= t`` reproduces the chosen operating point exactly.
    """
    if policy not in THRESHOLD_POLICIES:
        raise ValueError(
            f"unknown threshold policy {policy!r}; valid policies: "
            + ", ".join(THRESHOLD_POLICIES)
        )
    y, p = _validate(y_true, y_prob)
    _require_both_classes(y, "choose_threshold")
    if policy == "fixed":
        return 0.5

    thresholds, tp, fp = _roc_points(y, p)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if policy == "youden":
        j = tp / n_pos - fp / n_neg
        # argmax returns the first maximum = the highest threshold among ties
        return float(thresholds[int(np.argmax(j))])

    # policy == "sensitivity"
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError("target_sensitivity must be in (0, 1]")
    # Sensitivity is non-increasing in the threshold; thresholds are sorted
    # descending, so the first one reaching the target is the highest one.
    # It always exists: at the lowest score every positive is predicted.
    reached = tp >= target_sensitivity * n_pos - _COUNT_EPS
    return float(thresholds[int(np.argmax(reached))])


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
        "recall_normal": specificity,
        "recall_pneumonia": sensitivity,
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
def stratified_bootstrap_indices(
    y_true: Any, n_resamples: int, seed: int | np.random.Generator = 0
) -> np.ndarray:
    """Index matrix of shape ``(n_resamples, n)`` for a stratified bootstrap.

    Positives and negatives are resampled separately, each with its own
    count, so every resample keeps the original class balance and always has
    both classes (AUROC and sensitivity/specificity stay defined). Within a
    row, the positive draws come first, then the negative draws.
    """
    y = np.asarray(y_true).ravel()
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    pos_draw = pos[rng.integers(0, pos.size, size=(n_resamples, pos.size))]
    neg_draw = neg[rng.integers(0, neg.size, size=(n_resamples, neg.size))]
    return np.concatenate([pos_draw, neg_draw], axis=1)


def bootstrap_distribution(
    y_true: Any,
    y_prob: Any,
    threshold: float,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Each metric over ``n_resamples`` stratified bootstrap resamples.

    The threshold is held fixed (it was chosen on validation data), so the
    interval reflects test-set sampling variability only.
    """
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    y, p = _validate(y_true, y_prob)
    _require_both_classes(y, "bootstrap_ci")
    idx = stratified_bootstrap_indices(y, n_resamples, seed)
    return _rowwise_metrics(y[idx], p[idx], float(threshold))


def bootstrap_ci(
    y_true: Any,
    y_prob: Any,
    threshold: float,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap ``(1 - alpha)`` intervals for every metric.

    Stratified resampling (see :func:`stratified_bootstrap_indices`), fully
    vectorised across resamples. Resamples where a metric is undefined (NaN,
    e.g. PPV with no positive prediction) are ignored by the percentile.
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
def clinical_report(
    y_true: Any,
    y_prob: Any,
    threshold: float,
    policy: str,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the JSON-serialisable ``metrics.json`` payload.

    Schema::

        {"threshold": {"policy": str, "value": float},
         "n": {"total": int, "positive": int, "negative": int},
         "metrics": {<key>: {"value": float, "ci95": [lo, hi]}, ...},
         "confusion_matrix": {"tp": int, "fp": int, "tn": int, "fn": int}}

    Only plain Python ints/floats are used; an undefined value is
    ``float('nan')`` (``json.dump`` writes it as ``NaN``).
    """
    y, p = _validate(y_true, y_prob)
    threshold = float(threshold)
    point = binary_metrics(y, p, threshold)
    ci = bootstrap_ci(y, p, threshold, n_resamples=n_resamples, seed=seed, alpha=0.05)
    n_pos = int(y.sum())
    return {
        "threshold": {"policy": str(policy), "value": threshold},
        "n": {"total": int(y.size), "positive": n_pos, "negative": int(y.size) - n_pos},
        "metrics": {
            key: {"value": float(point[key]), "ci95": [float(ci[key][0]), float(ci[key][1])]}
            for key in METRIC_KEYS
        },
        "confusion_matrix": confusion_counts(y, p >= threshold),
    }


__all__ = [
    "METRIC_KEYS",
    "THRESHOLD_POLICIES",
    "binary_metrics",
    "bootstrap_ci",
    "bootstrap_distribution",
    "choose_threshold",
    "clinical_report",
    "confusion_counts",
    "expected_calibration_error",
    "reliability_bins",
    "rowwise_auroc_auprc",
    "stratified_bootstrap_indices",
]
