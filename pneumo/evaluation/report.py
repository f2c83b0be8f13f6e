"""The clinical report's figures and its Markdown page, written beside metrics.json.

Which figures a set can have is decided before any is drawn (:func:`figures_left_out`), so metrics.json
can say which are missing and why, and report.md repeats it: on a one-class set the ROC and
precision-recall curves are left out; the confusion matrix, reliability diagram, score histogram,
gallery and Grad-CAM are drawn for any labelled set, down to one image."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pneumo.evaluation import plots
from pneumo.evaluation.definedness import class_absence

FIGURES = {
    "roc.png": "ROC curve, operating point marked",
    "pr.png": "Precision-recall curve",
    "confusion.png": "Confusion matrix (counts and row-normalised)",
    "reliability.png": "Reliability diagram (calibration; before temperature scaling dashed, after solid)",
    "score_histogram.png": "Scores per class, with the threshold",
    "gallery.png": "Most confident correct predictions and most confident errors",
    "gradcam.png": "Grad-CAM: where the evidence for the predicted class lies",
    "subgroups.png": "Subgroups: sensitivity, specificity and AUROC per group with 95% CIs (dashed: overall)",
}


def pick_examples(labels: np.ndarray, probs: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Indices of up to n/2 most confident errors, then the most confident correct cases to fill n: the
    one selection behind the gallery and the Grad-CAM overlays. Confidence is in the predicted class;
    ties keep the data set's order, so the choice is reproducible."""
    predicted = probs >= threshold
    confidence = np.where(predicted, probs, 1 - probs)
    order = np.argsort(-confidence, kind="stable")
    wrong = order[predicted[order] != labels[order].astype(bool)]
    right = order[predicted[order] == labels[order].astype(bool)]
    n_wrong = min(len(wrong), n // 2)
    return np.concatenate([wrong[:n_wrong], right[: n - n_wrong]]).astype(int)


def figures_left_out(labels: np.ndarray) -> dict[str, str]:
    """File name -> one-line reason, for each figure of :data:`FIGURES` these 0/1 labels cannot have.

    ``labels``: shape (n,), 0 = NORMAL, 1 = PNEUMONIA. Empty when both classes are present.
    """
    labels = np.asarray(labels)
    n_positive = int(np.sum(labels == 1))
    absent = class_absence(n_positive, int(labels.size) - n_positive)
    if absent is None:
        return {}
    return {"roc.png": f"the ROC curve needs both classes; {absent}",
            "pr.png": f"the precision-recall curve needs both classes; {absent}"}


def write_figures(output_dir: Path, labels: np.ndarray, probs: np.ndarray, threshold: float,
                  confusion: dict[str, int], gallery_images: np.ndarray, gallery_index: np.ndarray,
                  probs_before: np.ndarray | None = None) -> list[Path]:
    """Every figure of the report these labels allow, as PNG in output_dir; returns the paths written.

    ``labels`` (n,) 0/1 ints, ``probs`` (n,) floats in [0, 1], ``gallery_images`` the images of
    ``gallery_index`` (see :func:`pneumo.evaluation.plots.plot_gallery`). The figures of
    :func:`figures_left_out` are not drawn. ``probs_before`` (n,), the uncalibrated probabilities (T = 1),
    adds the dashed before-calibration curve to the reliability diagram; ``probs`` are the calibrated ones. Raises ValueError on inconsistent inputs (from the plots).
    """
    left_out = figures_left_out(labels)
    drawers = {
        "roc.png": lambda path: plots.plot_roc(labels, probs, threshold, path),
        "pr.png": lambda path: plots.plot_pr(labels, probs, threshold, path),
        "confusion.png": lambda path: plots.plot_confusion(path=path, **confusion),
        "reliability.png": lambda path: plots.plot_reliability(labels, probs, path, probs_before=probs_before),
        "score_histogram.png": lambda path: plots.plot_score_histogram(labels, probs, threshold, path),
    }
    paths = [draw(output_dir / name) for name, draw in drawers.items() if name not in left_out]
    if len(gallery_index):
        errors = int(((probs >= threshold) != labels.astype(bool)).sum())
        paths.append(plots.plot_gallery(gallery_images, labels[gallery_index], probs[gallery_index], threshold,
                                        output_dir / "gallery.png", errors_total=errors))
    return paths


def write_markdown(output_dir: Path, report: dict[str, Any], table: str) -> Path:
    """report.md: the numbers as printed, then every figure that was written, and the figures left out
    with the reason (``report["figures_left_out"]``), one page to read or share. Returns its path."""
    data, checkpoint, threshold = report["data"], report["checkpoint"], report["threshold"]
    lines = ["# Clinical evaluation report", "",
             f"- checkpoint: `{checkpoint['path']}` (training run `{checkpoint['train_run']}`)",
             f"- data: {data.get('name', '')} (`{data.get('source', data['root'])}`), split `{data['split']}`, "
             f"{data['n_images']} image{'' if data['n_images'] == 1 else 's'}"
             + (f"; **external**: the model was trained on {data['training_data']['name']}"
                if data.get("external") else ""),
             f"- operating threshold: {threshold['value']:.4f}, policy `{threshold['policy']}`"
             f"{', chosen on the training run validation split' if threshold['policy'] != 'fixed' else ''}"
             + (f". **Note:** {threshold['note']}" if threshold.get("note") else ""),
             "", "```", table, "```", ""]
    left_out = report.get("figures_left_out") or {}
    for name, caption in FIGURES.items():
        if name not in left_out and (output_dir / name).is_file():  # not a stale file of an earlier run
            lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    if left_out:
        lines += ["## Figures left out", ""]
        lines += [f"- {FIGURES.get(name, name)}: not drawn, {reason}" for name, reason in left_out.items()]
        lines.append("")
    path = output_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
