"""evaluate.py's work: rebuild the trained model from its checkpoint, score a split, write the report, log it.

Any labelled set gets a report, down to one class or one image: predictions.csv is written first, then
metrics.json with every defined metric and null plus a reason for the others (valid JSON, no NaN), the
figures the set allows, report.md, and a FINISHED MLflow run with what exists (see `definedness.py`)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pneumo.data.labels import CLASS_NAMES
from pneumo.evaluation import report as report_pages
from pneumo.evaluation.calibration import apply_temperature, calibration_report
from pneumo.evaluation.definedness import json_safe
from pneumo.evaluation.gradcam import images_of, write_gradcam
from pneumo.evaluation.metrics import clinical_report, defined_metrics, undefined_reasons
from pneumo.evaluation.predict import predict_logits, write_predictions
from pneumo.evaluation.report_text import format_table
from pneumo.evaluation.subgroups import add_subgroups, read_subgroups, requested_subgroups
from pneumo.evaluation.report_html import write_html
from pneumo.evaluation.trained import load_trained, locate_checkpoint
from pneumo.tracking import logger as tracking

log = logging.getLogger(__name__)

def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """The clinical report on the test split (a predict_dir never comes here: evaluate.py sends it to
    `pneumo.deploy.bulk.run_bulk_prediction`, the one bulk-prediction path).

    Returns metrics.json's payload. Raises what the checkpoint, the data
    module or a bad config raise; a degenerate labelled set (one class, one image, equal scores) is not
    an error. The threshold and the temperature are always the checkpoint's, never fitted on the evaluated
    set: probabilities are sigmoid(logit / T), and `calibration` reports ECE and Brier before and after.
    """
    # A path, best/last, or an MLflow model URI looked up in the evaluation logger's store
    ckpt, model = locate_checkpoint(str(cfg.ckpt), cfg.logger.tracking_uri if cfg.get("logger") else None,
                                    Path(cfg.output_dir) / "model")
    cfg.ckpt = str(ckpt)
    trained = load_trained(ckpt)
    checkpoint, train_cfg, module = trained.checkpoint, trained.train_config, trained.module
    threshold, calibration, temperature = trained.threshold, trained.calibration, trained.temperature
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, precision=cfg.precision, logger=False,
                        enable_progress_bar=True, enable_model_summary=False)

    data_cfg, external = _data_config(cfg, train_cfg)
    subgroups = requested_subgroups(cfg, data_cfg, external)  # a data set without them: exit 2 before the work
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    groups = read_subgroups(datamodule.source, datamodule.files["test"], subgroups)  # before any image is scored
    logits = predict_logits(trainer, module, datamodule.test_dataloader())
    probs, probs_before = apply_temperature(logits, temperature), apply_temperature(logits, 1.0)
    labels = datamodule.labels["test"].astype(int)
    files = datamodule.files["test"]
    # First: the scores are kept whatever the rest of the report meets.
    write_predictions(output_dir / "predictions.csv", files, probs, threshold["value"], labels,
                      datamodule.patients("test"))

    report = clinical_report(labels, probs, threshold["value"], threshold["policy"],
                             n_resamples=cfg.bootstrap.resamples, seed=cfg.bootstrap.seed)
    report["at_0.5"] = defined_metrics(labels, probs, 0.5)
    report["at_0.5_not_defined"] = undefined_reasons(labels, probs, 0.5)
    report["calibration"] = calibration_report(labels, logits, calibration, n_resamples=cfg.bootstrap.resamples,
                                               seed=cfg.bootstrap.seed)
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
    if model:  # what the MLflow URI named, the alias resolved to the version really evaluated
        report["checkpoint"]["model"] = {"uri": model.uri, "name": model.name, "version": model.version}
    report["figures_left_out"] = report_pages.figures_left_out(labels)
    add_subgroups(report, cfg, datamodule.source, groups, labels, probs, output_dir)  # + subgroups.png
    report = json_safe(report)  # NaN (e.g. the checkpoint's undefined validation NPV) -> null
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=False))

    dataset, t = datamodule.datasets["test"], threshold["value"]
    examples = report_pages.pick_examples(labels, probs, t, cfg.gallery_size)
    report_pages.write_figures(output_dir, labels, probs, t, report["confusion_matrix"],
                               images_of(dataset, examples), examples,
                               probs_before=probs_before if temperature != 1.0 else None)
    if cfg.gradcam.n > 0:
        chosen = report_pages.pick_examples(labels, probs, t, cfg.gradcam.n)
        write_gradcam(module, cfg.gradcam.target_layer, images_of(dataset, chosen),
                      [_title(labels[i], probs[i], t) for i in chosen], output_dir / "gradcam.png")
    table = format_table(report)
    report_pages.write_markdown(output_dir, report, table)
    write_html(output_dir, report, table)
    print(table)
    if cfg.get("logger"):
        _log_to_mlflow(cfg, report, output_dir)
    print(f"\nReport: {output_dir / 'report.html'} (figures inside; report.md, metrics.json, predictions.csv "
          f"and the figures beside it)")
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
    config = checkpoint_data_config(chosen, train_cfg, cfg.output_dir, cfg.batch_size)
    if external and "evaluate_split" in chosen and not any(o.startswith("data.evaluate_split") for o in overrides):
        config = OmegaConf.merge(config, {"evaluate_split": "all"})
    return config, external


def checkpoint_data_config(data: DictConfig, train_cfg: DictConfig, output_dir: Any, batch_size: int) -> DictConfig:
    """`data` as a checkpoint is evaluated on it: the image size and channels its model was built for
    (from its training config `train_cfg`), the report folder and the batch size. evaluate.py and the
    promotion (`pneumo.deploy.promote`) build their data modules from this."""
    return OmegaConf.merge(data, {"image_size": train_cfg.data.image_size, "channels": train_cfg.data.channels,
                                  "output_dir": str(output_dir), "batch_size": batch_size})


def _data_source(data: DictConfig) -> str:
    """What identifies a data set: its label table, else its folder."""
    return str(Path(str(data.get("csv") or data.get("root"))).expanduser().resolve())


def describe_data_config(data: DictConfig) -> dict[str, str]:
    """The name and source of a data config without building it (the training data may not be here)."""
    source = _data_source(data)
    return {"name": str(data.get("name") or Path(str(data.get("root") or source)).name), "source": source}


def _title(label: int, prob: float, threshold: float) -> str:
    """A Grad-CAM tile's title: the same P(PNEUMONIA) the gallery and predictions.csv show."""
    return f"true {CLASS_NAMES[int(label)]}\nP(PNEUMONIA) = {prob:.2f} -> {CLASS_NAMES[int(prob >= threshold)]}"


def _log_to_mlflow(cfg: DictConfig, report: dict[str, Any], output_dir: Path) -> None:
    """One evaluation run: parameters, the defined test/<key> figures, the report files; FINISHED.

    Metrics not defined on the set are not logged (MLflow has no null); the tag `pneumo.not_defined`
    lists them with their reasons. A failure while logging closes the run as FAILED and is raised.
    """
    train_run = report["checkpoint"]["train_run"]
    logger = instantiate(cfg.logger, run_name=f"evaluate {Path(cfg.ckpt).name}",
                         tags={"pneumo.kind": "evaluation", "pneumo.train_run_id": str(train_run)})
    try:
        _log_report(logger, report, output_dir)
    except BaseException:
        tracking.end_run(logger, "FAILED")
        raise
    tracking.end_run(logger, "FINISHED")
    log.info("MLflow evaluation run %s. Open it with:\n%s", logger.run_id,
             tracking.ui_hint(logger.tracking_uri, logger.experiment_id))


def _log_report(logger: Any, report: dict[str, Any], output_dir: Path) -> None:
    data = report["data"]
    logger.log_hyperparams({"ckpt": report["checkpoint"]["path"], "data.root": data["root"],
                            "data.name": data["name"], "data.source": data["source"], "data.split": data["split"],
                            "data.external": data["external"], "data.training_data": data["training_data"]["name"],
                            "data.n_images": data["n_images"], "data.n_positive": data["n_positive"],
                            "threshold.policy": report["threshold"]["policy"],
                            "threshold.value": report["threshold"]["value"]})
    # The names training logs as val/<name> (one vocabulary: metrics.json's keys), here as test/<name>.
    logger.log_metrics({f"test/{key}": entry["value"] for key, entry in report["metrics"].items()
                        if _finite(entry["value"])})
    logger.log_metrics({f"test/{key}": float(value) for key, value in report["confusion_matrix"].items()})
    calibration = report.get("calibration") or {}
    logger.log_metrics({f"test/{key}": calibration[key]["value"] for key in ("ece_before", "brier_before")
                        if _finite((calibration.get(key) or {}).get("value"))})
    if "temperature" in calibration:
        logger.log_metrics({"test/temperature": float(calibration["temperature"])})
    not_defined = {key: entry["reason"] for key, entry in report["metrics"].items() if entry["value"] is None}
    if not_defined:
        tracking.set_tag(logger, "pneumo.not_defined", "; ".join(f"{k}: {r}" for k, r in not_defined.items()))
    if report.get("training_validation"):  # beside the external figures, for side-by-side columns
        logger.log_metrics({f"training_val/{key}": value for key, value in
                            report["training_validation"]["at_threshold"].items() if _finite(value)})
    for path in sorted(output_dir.iterdir()):
        if path.is_file() and path.suffix in (".json", ".csv", ".png", ".md", ".html"):
            tracking.log_file(logger, path, "report")


def _finite(value: Any) -> bool:
    return value is not None and bool(np.isfinite(value))
