"""Scoring images: predictions.csv for a labelled split or an unlabelled folder (predict_dir).

The probability written is the calibrated one, sigmoid(logit / T) with the checkpoint's temperature
(`pneumo.evaluation.calibration`; T = 1 for an uncalibrated checkpoint)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from pneumo.data.datasets import ImageFiles, find_images
from pneumo.data.splits import patient_id
from pneumo.evaluation.calibration import apply_temperature
from pneumo.evaluation.gradcam import images_of, write_gradcam


def predict_logits(trainer: L.Trainer, module: L.LightningModule, loader: Any) -> np.ndarray:
    """The model's raw logits (n,) float32 for every image of `loader`, in its order."""
    module.predict_logits = True
    try:
        return torch.cat(trainer.predict(module, dataloaders=loader)).float().numpy()
    finally:
        module.predict_logits = False


def predict_folder(cfg: DictConfig, train_cfg: DictConfig, module: L.LightningModule, trainer: L.Trainer,
                    threshold: dict[str, Any], output_dir: Path, temperature: float = 1.0) -> dict[str, Any]:
    """Unlabelled images: predictions.csv with sigmoid(logit / temperature) (and Grad-CAM when
    gradcam.on_predict), no metrics."""
    files, skipped = find_images(Path(cfg.predict_dir))
    if skipped:  # as training does: every file left out, with the reason, in the report folder
        (output_dir / "skipped_files.txt").write_text("".join(f"{e['path']}\t{e['reason']}\n" for e in skipped))
        print(f"{cfg.predict_dir}: left out {len(skipped)} file(s) that are not images (e.g. "
              f"{Path(skipped[0]['path']).name}: {skipped[0]['reason']}); all listed in "
              f"{output_dir / 'skipped_files.txt'}")
    dataset = ImageFiles(files, train_cfg.data.image_size, train_cfg.data.channels,
                         str(train_cfg.data.get("dicom", {}).get("voi", "auto")))
    probs = apply_temperature(predict_logits(trainer, module, DataLoader(dataset, batch_size=cfg.batch_size)),
                              temperature)
    write_predictions(output_dir / "predictions.csv", files, probs, threshold["value"])
    if cfg.gradcam.on_predict and cfg.gradcam.n > 0:
        shown = np.arange(min(cfg.gradcam.n, len(files)))
        write_gradcam(module, cfg.gradcam.target_layer, images_of(dataset, shown),
                      [f"{Path(files[i]).name}\nP(PNEUMONIA) = {probs[i]:.2f}" for i in shown],
                      output_dir / "gradcam.png")
    positives = int((probs >= threshold["value"]).sum())
    print(f"{len(files)} images scored; {positives} above the threshold {threshold['value']:.3f} "
          f"({threshold['policy']}). Predictions: {output_dir / 'predictions.csv'}")
    return {"n_images": len(files), "n_positive": positives, "threshold": threshold, "temperature": temperature}


def write_predictions(path: Path, files: list[str], probs: np.ndarray, threshold: float,
                      labels: np.ndarray | None = None, patients: list[str] | None = None) -> Path:
    """One row per image; `label` is empty for unlabelled images; the patient from the data set when it
    knows it (a table's patient column), else parsed from the file name."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id", "label", "probability", "prediction"])
        for index, (file, prob) in enumerate(zip(files, probs)):
            label = "" if labels is None else int(labels[index])
            patient = patients[index] if patients is not None else patient_id(file)
            writer.writerow([file, patient, label, f"{prob:.6f}", int(prob >= threshold)])
    return path
