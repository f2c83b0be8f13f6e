"""Scoring images: predictions.csv for a labelled split, or for a folder of any size (predict_dir).

A folder is streamed: worker processes decode the images (`pneumo.data.readers.read_image`, the decoder
and resize of training and evaluation) batch by batch, the model scores each batch as it comes, and its
rows are appended to predictions.csv at once (`prediction_log.PredictionLog`), so memory holds a few
batches whatever the folder's size and an interrupted run resumes where it stopped. The model is a
`Scorer`: the PyTorch model here (`torch_scorer`), or ONNX Runtime (`pneumo.deploy.bulk`).

The probability written is the calibrated one, sigmoid(logit / T) with the checkpoint's temperature
(`pneumo.evaluation.calibration`; T = 1 for an uncalibrated checkpoint)."""
from __future__ import annotations

import csv
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pneumo.data.datasets import find_images
from pneumo.data.image_formats import BadImageError
from pneumo.data.readers import read_image
from pneumo.data.splits import patient_id
from pneumo.evaluation.gradcam import write_gradcam
from pneumo.evaluation.prediction_log import PREDICTION_COLUMNS, PredictionLog
from pneumo.evaluation.trained import TrainedModel, probability_tensor


def predict_logits(trainer: L.Trainer, module: L.LightningModule, loader: Any) -> np.ndarray:
    """The model's raw logits (n,) float32 for every image of `loader`, in its order."""
    module.predict_logits = True
    try:
        return torch.cat(trainer.predict(module, dataloaders=loader)).float().numpy()
    finally:
        module.predict_logits = False


@dataclass
class Scorer:
    """What streams a folder: `probabilities` (uint8 (N, C, H, W) -> float64 (N,) P(pneumonia)), the input
    it takes, the operating threshold and what identifies the model (`model_sha256`: its checkpoint's).
    `module`: the PyTorch module when there is one (Grad-CAM needs it), else None."""

    runtime: str
    probabilities: Callable[[np.ndarray], np.ndarray]
    image_size: int
    channels: int
    dicom_voi: str
    threshold: float
    threshold_policy: str
    temperature: float
    model_sha256: str | None
    source: str
    module: Any = None
    details: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks: identifies the checkpoint behind a set of predictions
    (and behind an exported graph)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def torch_scorer(trained: TrainedModel, accelerator: str = "cpu", sha256: str | None = None) -> Scorer:
    """The PyTorch model as a Scorer: on the CPU `trained.probabilities` itself; on a GPU (accelerator
    auto/gpu/cuda with one present) the same computation on the device."""
    device = torch.device("cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu")
    module = trained.module.to(device)

    def on_device(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            batch = torch.from_numpy(images).to(device)
            return probability_tensor(module, batch, trained.temperature).double().cpu().numpy()

    return Scorer(runtime=f"torch ({device.type})",
                  probabilities=trained.probabilities if device.type == "cpu" else on_device,
                  image_size=trained.image_size, channels=trained.channels,
                  dicom_voi=str(trained.train_config.data.get("dicom", {}).get("voi", "auto")),
                  threshold=float(trained.threshold["value"]), threshold_policy=str(trained.threshold["policy"]),
                  temperature=trained.temperature, model_sha256=sha256 or file_sha256(trained.path),
                  source=str(trained.path), module=module)


class _Decoded(Dataset):
    """Files decoded in a worker: (index, uint8 (C, S, S) or None, reason or None)."""

    def __init__(self, files: list[str], size: int, channels: int, dicom_voi: str) -> None:
        self.files, self.size, self.channels, self.dicom_voi = files, size, channels, dicom_voi

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return index, read_image(self.files[index], self.size, self.channels, self.dicom_voi), None
        except BadImageError as error:
            return index, None, f"unreadable: {error.reason}"
        except OSError as error:  # vanished or unreadable between listing and decoding
            return index, None, f"unreadable: {error}"


Batch = tuple[np.ndarray, list[int], list[tuple[int, str]]]


def _collate(items: list[tuple[int, np.ndarray | None, str | None]]) -> Batch:
    """A batch: the decoded images stacked (uint8 (n, C, S, S)), their indices, and the bad ones' reasons."""
    good = [(index, image) for index, image, _ in items if image is not None]
    images = np.stack([image for _, image in good]) if good else np.zeros((0, 1, 1, 1), np.uint8)
    return images, [index for index, _ in good], [(index, reason) for index, _, reason in items if reason]


def decode_batches(files: list[str], size: int, channels: int, dicom_voi: str = "auto", *, batch_size: int = 64,
                   workers: int = 2) -> DataLoader:
    """Batches of (images uint8 (n, C, S, S), indices into `files`, [(index, reason)] of unreadable files),
    in file order, decoded by `workers` processes (0: in this one) a whole batch per task, at most two
    batches per worker ahead of the consumer."""
    return DataLoader(_Decoded(files, size, channels, dicom_voi), batch_size=batch_size, num_workers=workers,
                      collate_fn=_collate, prefetch_factor=2 if workers else None, persistent_workers=False)


def resolve_workers(workers: int | str) -> int:
    """`auto`: one decoding process per CPU this process may use; an integer as it is (0: decode here)."""
    return len(os.sched_getaffinity(0)) if workers == "auto" else int(workers)


def stream_folder(folder: str | Path, scorer: Scorer, output_dir: Path, *, batch_size: int = 64,
                  workers: int | str = "auto", gradcam_n: int = 0, gradcam_layer: str | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Score every image under `folder` (recursively; JPEG, PNG, DICOM) into `output_dir`/predictions.csv.

    Files an earlier run into `output_dir` scored or left out are skipped (see `PredictionLog`); files that
    are not images or cannot be decoded are listed in skipped_files.txt with the reason. `gradcam_n` > 0
    draws Grad-CAM for the first images of this run (needs `scorer.module`). Returns a summary: n_images
    (rows in the CSV), n_new, n_positive, n_skipped, n_unreadable_new, seconds, images_per_second.

    Raises:
        FileNotFoundError: `folder` is not a folder or holds no image.
        ResumeError: `output_dir` holds predictions of another model or folder.
        ValueError: gradcam_n > 0 without a PyTorch module.
    """
    if gradcam_n > 0 and scorer.module is None:
        raise ValueError(f"gradcam.on_predict=true needs the PyTorch model; the {scorer.runtime} runtime has "
                         f"none. Pass runtime=torch, or gradcam.on_predict=false")
    folder = Path(folder).expanduser().resolve()
    files, not_images = find_images(folder)
    log = PredictionLog(Path(output_dir), identity={"folder": str(folder), "model_sha256": scorer.model_sha256,
                                                    "threshold": scorer.threshold},
                        details={"model": scorer.source, "runtime": scorer.runtime, "temperature": scorer.temperature,
                                 "threshold_policy": scorer.threshold_policy, "image_size": scorer.image_size,
                                 "channels": scorer.channels, "columns": PREDICTION_COLUMNS, **scorer.details})
    new_skipped = log.record_skipped(not_images)
    if new_skipped:  # as training does: every file left out, with the reason, in the output folder
        print(f"{folder}: left out {len(new_skipped)} file(s) that are not images (e.g. "
              f"{Path(new_skipped[0]['path']).name}: {new_skipped[0]['reason']}); all listed in {log.skipped_path}")
    todo = [file for file in files if not log.done(file)]
    if len(todo) < len(files):
        print(f"resuming {log.output_dir}: {len(files) - len(todo)} of {len(files)} image(s) already done, "
              f"{len(todo)} to go")
    shown: list[tuple[str, np.ndarray, float]] = []
    unreadable: list[dict[str, str]] = []
    bar = tqdm(total=len(files), initial=len(files) - len(todo), desc="predict", unit="img", dynamic_ncols=True,
               disable=not progress, mininterval=1.0)
    started, scored = time.perf_counter(), 0
    try:
        for images, indices, bad in decode_batches(todo, scorer.image_size, scorer.channels, scorer.dicom_voi,
                                                   batch_size=batch_size, workers=resolve_workers(workers)):
            if len(indices):
                probs = scorer.probabilities(images)
                log.append([todo[i] for i in indices], probs, scorer.threshold)
                scored += len(indices)
                for image, i, p in zip(images, indices, probs):
                    if len(shown) < gradcam_n:
                        shown.append((todo[i], image.copy(), float(p)))
            if bad:
                unreadable += log.record_skipped([{"path": todo[i], "reason": reason} for i, reason in bad])
            bar.update(len(indices) + len(bad))
    except KeyboardInterrupt:
        bar.close()
        log.close()
        print(f"\ninterrupted: {len(log.scored)} of {len(files)} image(s) are in {log.csv_path}; run the same "
              f"command with output_dir={log.output_dir} to go on from there")
        raise
    finally:
        bar.close()
        log.close()
    seconds = time.perf_counter() - started
    if unreadable:
        print(f"{len(unreadable)} file(s) could not be decoded (e.g. {Path(unreadable[0]['path']).name}: "
              f"{unreadable[0]['reason']}); listed in {log.skipped_path}")
    if shown:
        write_gradcam(scorer.module, gradcam_layer, np.stack([image for _, image, _ in shown]),
                      [f"{Path(f).name}\nP(PNEUMONIA) = {p:.2f}" for f, _, p in shown], log.output_dir / "gradcam.png")
    total = len(log.scored)
    print(f"{total} images scored ({scored} now, {scorer.runtime}, {scored / max(seconds, 1e-9):.1f} img/s); "
          f"{log.n_positive} above the threshold {scorer.threshold:.3f} ({scorer.threshold_policy}). "
          f"Predictions: {log.csv_path}")
    return {"n_images": total, "n_new": scored, "n_positive": log.n_positive, "n_skipped": len(log.skipped),
            "n_unreadable_new": len(unreadable), "seconds": seconds,
            "images_per_second": scored / seconds if seconds > 0 else 0.0, "runtime": scorer.runtime,
            "threshold": {"policy": scorer.threshold_policy, "value": scorer.threshold},
            "temperature": scorer.temperature, "predictions": str(log.csv_path)}


def write_predictions(path: Path, files: list[str], probs: np.ndarray, threshold: float,
                      labels: np.ndarray | None = None, patients: list[str] | None = None) -> Path:
    """One row per image; `label` is empty for unlabelled images; the patient from the data set when it
    knows it (a table's patient column), else parsed from the file name."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PREDICTION_COLUMNS)
        for index, (file, prob) in enumerate(zip(files, probs)):
            label = "" if labels is None else int(labels[index])
            patient = patients[index] if patients is not None else patient_id(file)
            writer.writerow([file, patient, label, f"{prob:.6f}", int(prob >= threshold)])
    return path
