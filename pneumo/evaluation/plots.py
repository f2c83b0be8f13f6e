"""Evaluation figures for the pneumonia classifier.

Every function writes one PNG, closes its figure (so long evaluation runs do
not leak memory) and returns the output ``Path``. The Agg backend is selected
here because figures are produced on headless training machines.

Labels follow :mod:`pneumo.evaluation.metrics`: 1 = PNEUMONIA (positive),
0 = NORMAL, and a sample is predicted PNEUMONIA when ``y_prob >= threshold``.
Operating points and summary numbers come from that module, so the figures
always agree with ``metrics.json``. The ROC and precision-recall curves need
both classes and raise ValueError on a one-class set (the report leaves them
out and says why); every other figure can be drawn for any labelled set,
down to a single image.
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
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from pneumo.data.labels import CLASS_NAMES  # noqa: E402
from pneumo.evaluation.metrics import (_require_both_classes, _validate, binary_metrics,  # noqa: E402
                                       expected_calibration_error, reliability_bins)

_DPI = 100


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (creating parent folders) and close it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out


def _mark_operating_point(ax: Any, x: float, y: float, label: str) -> None:
    """The operating threshold's point on a curve: one red dot, labelled in the legend."""
    ax.scatter([x], [y], s=80, c="red", zorder=3, label=label)


def _unit_square(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    """Axes of a curve whose both coordinates are rates in [0, 1], with a light grid."""
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)


def plot_roc(y_true: Any, y_prob: Any, threshold: float, path: str | Path) -> Path:
    """ROC curve with AUROC in the legend and the chosen operating point.

    Raises ValueError on invalid input or when ``y_true`` holds one class only
    (a false or true positive rate would be 0/0 at every threshold).
    """
    y, p = _validate(y_true, y_prob)
    _require_both_classes(y, "the ROC curve")
    m = binary_metrics(y, p, threshold)
    fpr, tpr, _ = roc_curve(y, p)

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUROC = {m['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    _mark_operating_point(ax, 1.0 - m["specificity"], m["sensitivity"],
                          f"threshold {threshold:.3f}: sens {m['sensitivity']:.3f}, spec {m['specificity']:.3f}")
    _unit_square(ax, "1 - specificity (false positive rate)", "sensitivity (true positive rate)",
                 "ROC curve (positive = PNEUMONIA)")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=9)
    return save_figure(fig, path)


def plot_pr(y_true: Any, y_prob: Any, threshold: float, path: str | Path) -> Path:
    """Precision-recall curve with AUPRC, operating point and prevalence baseline.

    The baseline (precision = prevalence) is what a random classifier scores,
    which is needed to read AUPRC on an imbalanced test set. Raises ValueError
    on invalid input or when ``y_true`` holds one class only (without NORMAL
    the precision is 1 whatever the model; without PNEUMONIA recall is 0/0).
    """
    y, p = _validate(y_true, y_prob)
    _require_both_classes(y, "the precision-recall curve")
    m = binary_metrics(y, p, threshold)
    precision, recall, _ = precision_recall_curve(y, p)
    prevalence = float(y.mean())

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.step(recall, precision, where="post", lw=2, label=f"PR (AUPRC = {m['auprc']:.3f})")
    ax.axhline(prevalence, ls="--", c="grey", lw=1, label=f"prevalence = {prevalence:.3f}")
    if not math.isnan(m["ppv"]):  # no positive prediction -> no precision
        _mark_operating_point(ax, m["sensitivity"], m["ppv"],
                              f"threshold {threshold:.3f}: recall {m['sensitivity']:.3f}, precision {m['ppv']:.3f}")
    _unit_square(ax, "recall (sensitivity)", "precision (PPV)", "Precision-recall curve (positive = PNEUMONIA)")
    ax.legend(loc="lower left", fontsize=9)
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def plot_reliability(y_true: Any, y_prob: Any, path: str | Path, n_bins: int = 10,
                     probs_before: Any = None) -> Path:
    """Reliability diagram: observed PNEUMONIA rate vs mean predicted probability.

    Bin counts (of ``y_prob``) are drawn underneath because a large gap in a nearly empty bin
    matters much less than in a full one (that is how ECE weights them). ``probs_before`` (n,),
    the probabilities before temperature scaling, adds their curve dashed beside the solid
    calibrated one, each with its ECE in the legend. Raises ValueError on invalid input.
    """
    y, p = _validate(y_true, y_prob)
    bins = reliability_bins(y, p, n_bins)
    ece = expected_calibration_error(y, p, n_bins)
    edges = bins["edges"]
    centers = (edges[:-1] + edges[1:]) / 2.0
    width = edges[1] - edges[0]
    filled = bins["counts"] > 0
    # Checked before any figure exists, so a bad input leaves no open figure behind.
    p_before = None if probs_before is None else _validate(y, probs_before)[1]

    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(6, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    ax.bar(centers[filled], bins["frac_pos"][filled], width=width * 0.9,
           alpha=0.35, edgecolor="tab:blue", label="observed rate per bin")
    ax.plot(bins["mean_pred"][filled], bins["frac_pos"][filled], "o-", c="tab:blue",
            label="mean predicted vs observed" + (f", calibrated (ECE {ece:.3f})" if probs_before is not None else ""))
    title = f"Reliability diagram (ECE = {ece:.3f}, {n_bins} bins)"
    if p_before is not None:
        before = reliability_bins(y, p_before, n_bins)
        ece_before = expected_calibration_error(y, p_before, n_bins)
        kept = before["counts"] > 0
        ax.plot(before["mean_pred"][kept], before["frac_pos"][kept], "s--", c="tab:orange",
                label=f"before temperature scaling (ECE {ece_before:.3f})")
        title = f"Reliability diagram (ECE {ece_before:.3f} -> {ece:.3f}, {n_bins} bins)"
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="fraction PNEUMONIA", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)

    ax_n.bar(centers, bins["counts"], width=width * 0.9, color="grey")
    for x, c in zip(centers, bins["counts"]):
        ax_n.text(x, c, str(int(c)), ha="center", va="bottom", fontsize=8)
    ax_n.set(xlabel="predicted probability of PNEUMONIA", ylabel="count")
    ax_n.set_ylim(0, max(1, int(bins["counts"].max())) * 1.25)
    return save_figure(fig, path)


def plot_score_histogram(y_true: Any, y_prob: Any, threshold: float, path: str | Path) -> Path:
    """:func:`score_histogram_figure` saved as PNG at ``path`` (returned)."""
    return save_figure(score_histogram_figure(y_true, y_prob, threshold), path)


def score_histogram_figure(y_true: Any, y_prob: Any, threshold: float) -> Figure:
    """Score distribution of each true class with the decision threshold.

    Shows how well the classes separate and how many samples sit close to the
    threshold, i.e. how fragile the operating point is. A class absent from
    ``y_true`` is left out of the figure and named in the title.
    """
    y, p = _validate(y_true, y_prob)
    edges = np.linspace(0.0, 1.0, 41)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    absent = [CLASS_NAMES[label] for label in (0, 1) if not (y == label).any()]
    for label, color in ((0, "tab:green"), (1, "tab:red")):
        scores = p[y == label]
        if not scores.size:
            continue
        ax.hist(scores, bins=edges, alpha=0.5, color=color,
                label=f"true {CLASS_NAMES[label]} (n={scores.size})")
    ax.axvline(threshold, c="black", ls="--", lw=1.5, label=f"threshold = {threshold:.3f}")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.5 ticks on a small set
    ax.set(xlim=(0, 1), xlabel="predicted probability of PNEUMONIA", ylabel="count",
           title="Score distribution per class" + (f" (no {absent[0]} image in this set)" if absent else ""))
    ax.legend(fontsize=9)
    return fig


def to_nhwc(images: np.ndarray) -> np.ndarray:
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


def plot_gallery(images: np.ndarray, y_true: Any, y_prob: Any, threshold: float, path: str | Path,
                 errors_total: int | None = None) -> Path:
    """:func:`gallery_figure` saved as PNG at ``path`` (returned)."""
    return save_figure(gallery_figure(images, y_true, y_prob, threshold, errors_total), path)


def gallery_figure(images: np.ndarray, y_true: Any, y_prob: Any, threshold: float,
                   errors_total: int | None = None) -> Figure:
    """Grid of the given images, in order, each titled correct/ERROR, its true class and P(PNEUMONIA).

    The images are chosen by the caller (the report's
    :func:`pneumo.evaluation.report.pick_examples`: the most confident errors, then the most confident
    correct cases). ``images``: (N, H, W), (N, H, W, 3) or (N, C, H, W) uint8; ``y_true`` (N,) 0/1;
    ``y_prob`` (N,) probabilities of PNEUMONIA, shown as such on every tile (the same number Grad-CAM and
    predictions.csv show). ``errors_total``: the errors in the whole set, for the title (default: those
    shown). Raises ValueError when images and labels disagree in number or the layout is unknown.
    """
    y, p = _validate(y_true, y_prob)
    imgs = to_nhwc(images)
    if imgs.shape[0] != y.size:
        raise ValueError(f"got {imgs.shape[0]} images for {y.size} labels")
    if not y.size:
        raise ValueError("the gallery needs at least one image")
    pred = (p >= threshold).astype(np.int64)
    correct = pred == y
    cols = min(4, y.size)
    rows = math.ceil(y.size / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, ax in zip(range(y.size), axes.ravel()):
        ax.imshow(imgs[i], cmap="gray" if imgs.ndim == 3 else None, vmin=0, vmax=255)
        ax.set_title(f"{'correct' if correct[i] else 'ERROR'}: true {CLASS_NAMES[y[i]]}\n"
                     f"P(PNEUMONIA) = {p[i]:.2f} -> {CLASS_NAMES[pred[i]]}",
                     fontsize=9, color="tab:green" if correct[i] else "tab:red")
    shown_errors = int((~correct).sum())
    total = shown_errors if errors_total is None else int(errors_total)
    fig.suptitle(f"Most confident errors ({shown_errors} of {total}) and correct predictions "
                 f"({int(correct.sum())}), threshold {threshold:.3f}")
    return fig


__all__ = [
    "CLASS_NAMES",
    "plot_confusion",
    "gallery_figure",
    "plot_gallery",
    "plot_pr",
    "plot_reliability",
    "plot_roc",
    "plot_score_histogram",
    "save_figure",
    "score_histogram_figure",
    "to_nhwc",
]
