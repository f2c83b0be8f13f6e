"""evaluate.py's work: rebuild the trained model from its checkpoint, score a split, write the report."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from pneumo import report as report_pages
from pneumo import tracking
from pneumo.checkpoints import load_checkpoint, load_weights
from pneumo.data import ImageFiles, list_images
from pneumo.factory import build_module
from pneumo.metrics import binary_metrics, clinical_report
from pneumo.module import PneumoniaClassifier
from pneumo.splits import patient_id

log = logging.getLogger(__name__)

TABLE_ROWS = (("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy"),
              ("sensitivity", "Sensitivity (recall)"), ("specificity", "Specificity"),
              ("ppv", "Precision (PPV)"), ("npv", "NPV"), ("f1", "F1"), ("auroc", "AUROC"), ("auprc", "AUPRC"),
              ("brier", "Brier score"), ("ece", "Calibration error (ECE)"),
              ("recall_normal", "Recall NORMAL"), ("recall_pneumonia", "Recall PNEUMONIA"))


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """The clinical report on the test split, or predictions only for an unlabelled predict_dir."""
    checkpoint = load_checkpoint(cfg.ckpt)
    train_cfg = OmegaConf.create(checkpoint["pneumo"]["config"])
    module = build_module(train_cfg, train=False)
    load_weights(module, checkpoint, cfg.ckpt)
    module.eval()
    threshold = dict(checkpoint["pneumo"].get("threshold") or {"policy": "fixed", "value": 0.5})
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, precision=cfg.precision, logger=False,
                        enable_progress_bar=True, enable_model_summary=False)
    if cfg.get("predict_dir"):
        return _predict_folder(cfg, train_cfg, module, trainer, threshold, output_dir)

    data_cfg, external = _data_config(cfg, train_cfg)
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    probs = torch.cat(trainer.predict(module, dataloaders=datamodule.test_dataloader())).numpy()
    labels = datamodule.labels["test"].astype(int)
    files = datamodule.files["test"]

    report = clinical_report(labels, probs, threshold["value"], threshold["policy"],
                             n_resamples=cfg.bootstrap.resamples, seed=cfg.bootstrap.seed)
    report["at_0.5"] = binary_metrics(labels, probs, 0.5)
    trained_on = describe_data_config(train_cfg.data)
    described = datamodule.describe()
    report["data"] = {"name": described["name"], "source": described["source"], "root": str(datamodule.root),
                      "split": getattr(datamodule, "evaluate_split", "test"), "n_images": len(files),
                      "n_positive": int(labels.sum()), "n_negative": int(len(labels) - labels.sum()),
                      "external": external, "training_data": trained_on}
    report["threshold"]["chosen_on"] = f"validation split of {trained_on['name']}"
    if external:
        report["threshold"]["note"] = (f"chosen on the validation split of {trained_on['name']}, another data set: "
                                       f"sensitivity and specificity here show how it transfers; choose a new "
                                       f"threshold on local data before clinical use")
    report["training_validation"] = checkpoint["pneumo"].get("validation")
    report["checkpoint"] = {"path": str(Path(cfg.ckpt).resolve()),
                            "train_run": (checkpoint["pneumo"].get("mlflow") or {}).get("run_id")}
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    write_predictions(output_dir / "predictions.csv", files, probs, threshold["value"], labels,
                      datamodule.patients("test"))

    dataset, t = datamodule.datasets["test"], threshold["value"]
    examples = report_pages.pick_examples(labels, probs, t, cfg.gallery_size)
    report_pages.write_figures(output_dir, labels, probs, t, report["confusion_matrix"],
                               _images(dataset, examples), examples)
    if cfg.gradcam.n > 0:
        chosen = report_pages.pick_examples(labels, probs, t, cfg.gradcam.n)
        _write_gradcam(module, cfg, _images(dataset, chosen), [_title(labels[i], probs[i], t) for i in chosen],
                       output_dir / "gradcam.png")
    table = format_table(report)
    report_pages.write_markdown(output_dir, report, table)
    print(table)
    if cfg.get("logger"):
        _log_to_mlflow(cfg, report, output_dir)
    return report


def _data_config(cfg: DictConfig, train_cfg: DictConfig) -> tuple[DictConfig, bool]:
    """The training run's data config, unless the command line names data: then the one composed here;
    and whether that is another data set than the model was trained on (external validation).

    Image size and channels always follow the checkpoint, since the model was built for them. An
    external table data set is evaluated over every labelled image unless data.evaluate_split is named.
    """
    overrides = [o.lstrip("+~") for o in HydraConfig.get().overrides.task]
    named = any(o.startswith("data") for o in overrides)
    chosen = cfg.data if named else train_cfg.data
    external = named and _data_source(cfg.data) != _data_source(train_cfg.data)
    settings: dict[str, Any] = {"image_size": train_cfg.data.image_size, "channels": train_cfg.data.channels,
                                "output_dir": cfg.output_dir, "batch_size": cfg.batch_size}
    if external and "evaluate_split" in chosen and not any(o.startswith("data.evaluate_split") for o in overrides):
        settings["evaluate_split"] = "all"
    return OmegaConf.merge(chosen, settings), external


def _data_source(data: DictConfig) -> str:
    """What identifies a data set: its label table, else its folder."""
    return str(Path(str(data.get("csv") or data.get("root"))).expanduser().resolve())


def describe_data_config(data: DictConfig) -> dict[str, str]:
    """The name and source of a data config without building it (the training data may not be here)."""
    source = _data_source(data)
    return {"name": str(data.get("name") or Path(str(data.get("root") or source)).name), "source": source}


def _predict_folder(cfg: DictConfig, train_cfg: DictConfig, module: PneumoniaClassifier, trainer: L.Trainer,
                    threshold: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """Unlabelled images: predictions.csv (and Grad-CAM when gradcam.on_predict), no metrics."""
    files = list_images(Path(cfg.predict_dir))
    dataset = ImageFiles(files, train_cfg.data.image_size, train_cfg.data.channels,
                         str(train_cfg.data.get("dicom", {}).get("voi", "auto")))
    probs = torch.cat(trainer.predict(module, dataloaders=DataLoader(dataset, batch_size=cfg.batch_size))).numpy()
    write_predictions(output_dir / "predictions.csv", files, probs, threshold["value"])
    if cfg.gradcam.on_predict and cfg.gradcam.n > 0:
        shown = np.arange(min(cfg.gradcam.n, len(files)))
        _write_gradcam(module, cfg, _images(dataset, shown),
                       [f"{Path(files[i]).name}\np={probs[i]:.2f}" for i in shown], output_dir / "gradcam.png")
    positives = int((probs >= threshold["value"]).sum())
    print(f"{len(files)} images scored; {positives} above the threshold {threshold['value']:.3f} "
          f"({threshold['policy']}). Predictions: {output_dir / 'predictions.csv'}")
    return {"n_images": len(files), "n_positive": positives, "threshold": threshold}


def _write_gradcam(module: PneumoniaClassifier, cfg: DictConfig, images: np.ndarray, titles: list[str],
                   path: Path) -> None:
    from pneumo.gradcam import gradcam_maps, resolve_target_layer, save_overlays

    if not len(images):
        return
    inputs = module.preprocess(torch.from_numpy(images).to(module.device), train=False)
    maps = gradcam_maps(module.model, inputs, resolve_target_layer(module.model, cfg.gradcam.target_layer))
    save_overlays(images, maps, titles, path)


def _images(dataset: Any, indices: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) images of a split, as the model saw them before preprocessing."""
    if not len(indices):
        return np.zeros((0, 1, 1, 1), np.uint8)
    return np.stack([dataset[int(i)][0].numpy() for i in indices])


def _title(label: int, prob: float, threshold: float) -> str:
    names = ("NORMAL", "PNEUMONIA")
    return f"true {names[int(label)]}\npred {names[int(prob >= threshold)]} p={prob:.2f}"


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


def format_table(report: dict[str, Any]) -> str:
    """The clinical table: metrics with 95% CIs at the operating threshold, and the 2x2 matrix."""
    threshold, metrics, cm = report["threshold"], report["metrics"], report["confusion_matrix"]
    n, data = report["n"], report.get("data", {})
    split = "every labelled image" if data.get("split") == "all" else "test split"
    where = f"{data['name']}, {split}" if "name" in data else split
    lines = [f"{'External data' if data.get('external') else 'Data'}: {where}: {n['total']} images "
             f"({n['positive']} pneumonia, {n['negative']} normal)",
             f"Operating threshold {threshold['value']:.3f} (policy: {threshold['policy']}); "
             f"95% CI from a stratified bootstrap"]
    if threshold.get("note"):
        lines.append(f"Note: threshold {threshold['note']}")
    lines += ["", f"{'metric':<25}{'value':>7}  {'95% CI':<16}{'at 0.5':>7}"]
    for key, label in TABLE_ROWS:
        lo, hi = metrics[key]["ci95"]
        lines.append(f"{label:<25}{metrics[key]['value']:>7.3f}  [{lo:.3f}, {hi:.3f}] {report['at_0.5'][key]:>7.3f}")
    width = max(11, max(len(str(v)) for v in cm.values()) + 2)
    lines += ["", "Confusion matrix (rows: true class, columns: predicted)",
              f"{'':<16}{'NORMAL':>{width}}{'PNEUMONIA':>{width}}",
              f"{'true NORMAL':<16}{cm['tn']:>{width}}{cm['fp']:>{width}}",
              f"{'true PNEUMONIA':<16}{cm['fn']:>{width}}{cm['tp']:>{width}}"]
    lines += comparison_lines(report)
    return "\n".join(lines)


COMPARED = (("auroc", "AUROC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
            ("ppv", "Precision (PPV)"), ("balanced_accuracy", "Balanced accuracy"))


def comparison_lines(report: dict[str, Any]) -> list[str]:
    """The training run's validation figures beside these, at the same threshold: how the model transfers."""
    validation = report.get("training_validation")
    if not validation:
        return []
    trained_on = report["data"]["training_data"]["name"]
    here = report["data"]["name"]
    lines = ["", f"At the operating threshold: training validation ({trained_on}, {validation['n_images']} images) "
                 f"vs {here}", f"{'metric':<25}{'validation':>11}{'here':>9}{'change':>9}"]
    for key, label in COMPARED:
        before, after = validation["at_threshold"][key], report["metrics"][key]["value"]
        lines.append(f"{label:<25}{before:>11.3f}{after:>9.3f}{after - before:>+9.3f}")
    return lines


def _log_to_mlflow(cfg: DictConfig, report: dict[str, Any], output_dir: Path) -> None:
    train_run = report["checkpoint"]["train_run"]
    logger = instantiate(cfg.logger, run_name=f"evaluate {Path(cfg.ckpt).name}",
                         tags={"pneumo.kind": "evaluation", "pneumo.train_run_id": str(train_run)})
    data = report["data"]
    logger.log_hyperparams({"ckpt": report["checkpoint"]["path"], "data.root": data["root"],
                            "data.name": data["name"], "data.source": data["source"], "data.split": data["split"],
                            "data.external": data["external"], "data.training_data": data["training_data"]["name"],
                            "data.n_images": data["n_images"], "data.n_positive": data["n_positive"],
                            "threshold.policy": report["threshold"]["policy"],
                            "threshold.value": report["threshold"]["value"]})
    logger.log_metrics({f"test/{key}": entry["value"] for key, entry in report["metrics"].items()
                        if np.isfinite(entry["value"])})
    logger.log_metrics({f"test/{key}": float(value) for key, value in report["confusion_matrix"].items()})
    if report.get("training_validation"):  # beside the external figures, for side-by-side columns
        logger.log_metrics({f"training_val/{key}": value for key, value in
                            report["training_validation"]["at_threshold"].items() if np.isfinite(value)})
    # The training run's names too (val/recall ... -> test/recall ...), so both compare column by column.
    aliases = {"recall": "sensitivity", "precision": "ppv", "acc": "accuracy"}
    logger.log_metrics({f"test/{alias}": report["metrics"][key]["value"] for alias, key in aliases.items()
                        if np.isfinite(report["metrics"][key]["value"])})
    for path in sorted(output_dir.iterdir()):
        if path.is_file() and path.suffix in (".json", ".csv", ".png", ".md"):
            tracking.log_file(logger, path, "report")
    tracking.end_run(logger, "FINISHED")
    log.info("MLflow evaluation run %s. Open it with:\n%s", logger.run_id,
             tracking.ui_hint(logger.tracking_uri, logger.experiment_id))
