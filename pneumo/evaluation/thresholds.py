"""Choosing the operating threshold on validation scores (fixed 0.5, Youden's J, or a target sensitivity).

A sample is predicted PNEUMONIA when ``y_prob >= threshold``, the rule every metric in
:mod:`pneumo.evaluation.metrics` uses, so the chosen threshold reproduces exactly the operating point
it was chosen for.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pneumo.evaluation.metrics import _require_both_classes, _validate

#: Threshold policies accepted by :func:`choose_threshold`.
THRESHOLD_POLICIES: tuple[str, ...] = ("fixed", "youden", "sensitivity")

# Tolerance when comparing a sensitivity count against target * n_positive,
# so that e.g. 19/20 counts as reaching a 0.95 target despite float rounding.
_COUNT_EPS = 1e-9


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
