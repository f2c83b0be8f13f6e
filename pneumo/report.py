"""The clinical report's figures and its Markdown page, written beside metrics.json."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pneumo import plots

FIGURES = {
    "roc.png": "ROC curve, operating point marked",
    "pr.png": "Precision-recall curve",
    "confusion.png": "Confusion matrix (counts and row-normalised)",
    "reliability.png": "Reliability diagram (calibration)",
    "score_histogram.png": "Scores per class, with the threshold",
    "gallery.png": "Most confident correct predictions and most confident errors",
    "gradcam.png": "Grad-CAM: where the evidence for the predicted class lies",
}


def pick_examples(labels: np.ndarray, probs: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Indices of up to n/2 most confident errors, then the most confident correct cases to fill n."""
    predicted = probs >= threshold
    confidence = np.where(predicted, probs, 1 - probs)
    order = np.argsort(-confidence, kind="stable")
    wrong = order[predicted[order] != labels[order].astype(bool)]
    right = order[predicted[order] == labels[order].astype(bool)]
    n_wrong = min(len(wrong), n // 2)
    return np.concatenate([wrong[:n_wrong], right[: n - n_wrong]]).astype(int)


def write_figures(output_dir: Path, labels: np.ndarray, probs: np.ndarray, threshold: float,
                  confusion: dict[str, int], gallery_images: np.ndarray, gallery_index: np.ndarray) -> list[Path]:
    """Every figure of the report as PNG in output_dir."""
    paths = [
        plots.plot_roc(labels, probs, threshold, output_dir / "roc.png"),
        plots.plot_pr(labels, probs, threshold, output_dir / "pr.png"),
        plots.plot_confusion(path=output_dir / "confusion.png", **confusion),
        plots.plot_reliability(labels, probs, output_dir / "reliability.png"),
        plots.plot_score_histogram(labels, probs, threshold, output_dir / "score_histogram.png"),
    ]
    if len(gallery_index):
        paths.append(plots.plot_gallery(gallery_images, labels[gallery_index], probs[gallery_index], threshold,
                                        output_dir / "gallery.png", n=len(gallery_index)))
    return paths


def write_markdown(output_dir: Path, report: dict[str, Any], table: str) -> Path:
    """report.md: the numbers as printed, then every figure that was written, one page to read or share."""
    data, checkpoint, threshold = report["data"], report["checkpoint"], report["threshold"]
    lines = ["# Clinical evaluation report", "",
             f"- checkpoint: `{checkpoint['path']}` (training run `{checkpoint['train_run']}`)",
             f"- data: {data.get('name', '')} (`{data.get('source', data['root'])}`), split `{data['split']}`, "
             f"{data['n_images']} images"
             + (f"; **external**: the model was trained on {data['training_data']['name']}"
                if data.get("external") else ""),
             f"- operating threshold: {threshold['value']:.4f}, policy `{threshold['policy']}`"
             f"{', chosen on the training run validation split' if threshold['policy'] != 'fixed' else ''}"
             + (f". **Note:** {threshold['note']}" if threshold.get("note") else ""),
             "", "```", table, "```", ""]
    for name, caption in FIGURES.items():
        if (output_dir / name).is_file():
            lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    path = output_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
