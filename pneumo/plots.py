"""Evaluation figures for the pneumonia classifier.

Every function writes one PNG, closes its figure (so long evaluation runs do
not leak memory) and returns the output ``Path``. The Agg backend is selected
here because figures are produced on headless training machines.

Labels follow :mod:`pneumo.metrics`: 1 = PNEUMONIA (positive), 0 = NORMAL,
and a sample is predicted PNEUMONIA when ``y_prob >= threshold``. Operating
points and summary numbers come from :mod:`pneumo.metrics`, so the figures
always agree with ``metrics.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: must happen before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from pneumo.metrics import (  # noqa: E402
    _validate,
    binary_metrics,
    confusion_counts,
    expected_calibration_error,
    reliability_bins,
)

CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
_DPI = 100


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (creating parent folders) and close it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out


def plot_roc(y_true: Any, y_prob: Any, threshold: float, path: str | Path) -> Path:
    """ROC curve with AUROC in the legend and the chosen operating point."""
    y, p = _validate(y_true, y_prob)
    m = binary_metrics(y, p, threshold)
    fpr, tpr, _ = roc_curve(y, p)

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUROC = {m['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax.scatter(
        [1.0 - m["specificity"]],
        [m["sensitivity"]],
        s=80,
        c="red",
        zorder=3,
        label=(
            f"threshold {threshold:.3f}: sens {m['sensitivity']:.3f}, "
            f"spec {m['specificity']:.3f}"
        ),
    )
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        title="ROC curve (positive = PNEUMONIA)",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return _save(fig, path)


def plot_pr(y_true: Any, y_prob: Any, threshold: float, path: str | Path) -> Path:
    """Precision-recall curve with AUPRC, operating point and prevalence baseline.

    The baseline (precision = prevalence) is what a random classifier scores,
    which is needed to read AUPRC on an imbalanced test set.
    """
    y, p = _validate(y_true, y_prob)
    m = binary_metrics(y, p, threshold)
    precision, recall, _ = precision_recall_curve(y, p)
    prevalence = float(y.mean())

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.step(recall, precision, where="post", lw=2, label=f"PR (AUPRC = {m['auprc']:.3f})")
    ax.axhline(prevalence, ls="--", c="grey", lw=1, label=f"prevalence = {prevalence:.3f}")
    if not math.isnan(m["ppv"]):  # no positive prediction -> no precision
        ax.scatter(
            [m["sensitivity"]],
            [m["ppv"]],
            s=80,
            c="red",
            zorder=3,
            label=(
                f"threshold {threshold:.3f}: recall {m['sensitivity']:.3f}, "
                f"precision {m['ppv']:.3f}"
            ),
        )
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="recall (sensitivity)",
        ylabel="precision (PPV)",
        title="Precision-recall curve (positive = PNEUMONIA)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    return _save(fig, path)


def plot_confusion(tp: int, fp: int, tn: int, fn: int, path: str | Path) -> Path:
    """Confusion matrix as counts and row-normalised (per true class) rates.

    Rows are the true class (NORMAL, PNEUMONIA), columns the prediction; the
    normalised panel's diagonal is specificity and sensitivity.
    """
    counts = np.array([[tn, fp], [fn, tp]], dtype=np.float64)
    row_sums = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(row_sums > 0, counts / row_sums, np.nan)

    fig, axes = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
    panels = [(counts, "Counts", "{:.0f}"), (rates, "Row-normalised (recall per class)", "{:.1%}")]
    for ax, (mat, title, fmt) in zip(axes, panels):
        finite = mat[np.isfinite(mat)]
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        ax.imshow(np.nan_to_num(mat), cmap="Blues", vmin=0.0, vmax=vmax)
        for i in range(2):
            for j in range(2):
                value = mat[i, j]
                text = "n/a" if np.isnan(value) else fmt.format(value)
                dark = not np.isnan(value) and value > 0.6 * vmax
                ax.text(j, i, text, ha="center", va="center", fontsize=14,
                        color="white" if dark else "black")
        ax.set_xticks([0, 1], labels=list(CLASS_NAMES))
        ax.set_yticks([0, 1], labels=list(CLASS_NAMES))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    fig.suptitle(f"Confusion matrix (TP={tp}, FP={fp}, TN={tn}, FN={fn})")
    return _save(fig, path)


def plot_reliability(y_true: Any, y_prob: Any, path: str | Path, n_bins: int = 10) -> Path:
    """Reliability diagram: observed PNEUMONIA rate vs mean predicted probability.

    Bin counts are drawn underneath because a large gap in a nearly empty bin
    matters much less than in a full one (that is how ECE weights them).
    """
    y, p = _validate(y_true, y_prob)
    bins = reliability_bins(y, p, n_bins)
    ece = expected_calibration_error(y, p, n_bins)
    edges = bins["edges"]
    centers = (edges[:-1] + edges[1:]) / 2.0
    width = edges[1] - edges[0]
    filled = bins["counts"] > 0

    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(6, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    ax.bar(centers[filled], bins["frac_pos"][filled], width=width * 0.9,
           alpha=0.35, edgecolor="tab:blue", label="observed rate per bin")
    ax.plot(bins["mean_pred"][filled], bins["frac_pos"][filled], "o-", c="tab:blue",
            label="mean predicted vs observed")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="fraction PNEUMONIA",
           title=f"Reliability diagram (ECE = {ece:.3f}, {n_bins} bins)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)

    ax_n.bar(centers, bins["counts"], width=width * 0.9, color="grey")
    for x, c in zip(centers, bins["counts"]):
        ax_n.text(x, c, str(int(c)), ha="center", va="bottom", fontsize=8)
    ax_n.set(xlabel="predicted probability of PNEUMONIA", ylabel="count")
    ax_n.set_ylim(0, max(1, int(bins["counts"].max())) * 1.25)
    return _save(fig, path)


def plot_score_histogram(y_true: Any, y_prob: Any, threshold: float, path: str | Path) -> Path:
    """Score distribution of each true class with the decision threshold.

    Shows how well the classes separate and how many samples sit close to the
    threshold, i.e. how fragile the operating point is.
    """
    y, p = _validate(y_true, y_prob)
    edges = np.linspace(0.0, 1.0, 41)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, color in ((0, "tab:green"), (1, "tab:red")):
        scores = p[y == label]
        ax.hist(scores, bins=edges, alpha=0.5, color=color,
                label=f"true {CLASS_NAMES[label]} (n={scores.size})")
    ax.axvline(threshold, c="black", ls="--", lw=1.5, label=f"threshold = {threshold:.3f}")
    ax.set(xlim=(0, 1), xlabel="predicted probability of PNEUMONIA", ylabel="count",
           title="Score distribution per class")
    ax.legend(fontsize=9)
    return _save(fig, path)


def _to_nhwc(images: np.ndarray) -> np.ndarray:
    """Return images as (N, H, W) grey or (N, H, W, 3) RGB for ``imshow``."""
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        return imgs
    if imgs.ndim == 4:
        if imgs.shape[-1] == 3:
            return imgs
        if imgs.shape[-1] == 1:
            return imgs[..., 0]
        if imgs.shape[1] == 3:
            return np.transpose(imgs, (0, 2, 3, 1))
        if imgs.shape[1] == 1:
            return imgs[:, 0]
    raise ValueError(
        f"images must be (N,H,W), (N,H,W,3) or (N,3,H,W); got shape {imgs.shape}"
    )


def plot_gallery(
    images: np.ndarray,
    y_true: Any,
    y_prob: Any,
    threshold: float,
    path: str | Path,
    n: int = 16,
) -> Path:
    """Grid of the most confident errors and the most confident correct cases.

    Up to half of the ``n`` slots go to errors (the most useful cases to
    inspect); slots that errors cannot fill go to correct predictions. Each
    tile is titled with true label, predicted label and the confidence of
    the prediction (``p`` for PNEUMONIA, ``1 - p`` for NORMAL).
    """
    y, p = _validate(y_true, y_prob)
    imgs = _to_nhwc(images)
    if imgs.shape[0] != y.size:
        raise ValueError(f"got {imgs.shape[0]} images for {y.size} labels")
    if n < 1:
        raise ValueError("n must be >= 1")

    pred = (p >= threshold).astype(np.int64)
    confidence = np.where(pred == 1, p, 1.0 - p)
    # most confident first; stable so ties keep dataset order (reproducible)
    by_conf = np.argsort(-confidence, kind="stable")
    errors = by_conf[pred[by_conf] != y[by_conf]]
    correct = by_conf[pred[by_conf] == y[by_conf]]
    n_err = min(errors.size, n // 2) if correct.size else min(errors.size, n)
    n_ok = min(correct.size, n - n_err)
    chosen = [(int(i), False) for i in errors[:n_err]] + [(int(i), True) for i in correct[:n_ok]]

    cols = min(4, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (i, ok) in zip(axes.ravel(), chosen):
        is_grey = imgs.ndim == 3
        ax.imshow(imgs[i], cmap="gray" if is_grey else None, vmin=0, vmax=255)
        ax.set_title(
            f"{'correct' if ok else 'ERROR'}\ntrue {CLASS_NAMES[y[i]]}\n"
            f"pred {CLASS_NAMES[pred[i]]} ({confidence[i]:.0%})",
            fontsize=9,
            color="tab:green" if ok else "tab:red",
        )
    cm = confusion_counts(y, pred)
    fig.suptitle(
        f"Most confident errors ({n_err} of {cm['fp'] + cm['fn']}) and correct "
        f"predictions ({n_ok}), threshold {threshold:.3f}"
    )
    return _save(fig, path)


__all__ = [
    "CLASS_NAMES",
    "plot_confusion",
    "plot_gallery",
    "plot_pr",
    "plot_reliability",
    "plot_roc",
    "plot_score_histogram",
]
