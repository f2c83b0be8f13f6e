"""The user's path through the real entry points: train.py, then evaluate.py, then the MLflow store."""
import json
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import isolated_overrides, run_entry_point

EPOCHS = 2
TINY_DATA = ["data=synthetic", "data.synthetic.n_train=80", "data.synthetic.n_test=40",
             "data.synthetic.min_side=512", "data.synthetic.max_side=640", "data.image_size=64"]
# (val/npv is left out: undefined, so not logged, in an epoch whose threshold calls every image positive.)
EPOCH_METRICS = ["train/loss", "val/loss", "val/sensitivity", "val/specificity", "val/ppv",
                 "val/accuracy", "val/auroc", "val/tp", "val/fp", "val/tn", "val/fn", "val/threshold",
                 "val/sensitivity_at_0.5", "val/specificity_at_0.5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    result = run_entry_point("train.py", *TINY_DATA, f"trainer.max_epochs={EPOCHS}", *isolated_overrides(tmp))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, result


def _client(tmp: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db")


def test_training_logs_every_metric_once_per_epoch(trained):
    tmp, _ = trained
    client = _client(tmp)
    experiment = client.get_experiment_by_name("pneumo")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    for key in EPOCH_METRICS:
        history = client.get_metric_history(run.info.run_id, key)
        assert len(history) == EPOCHS, (key, history)
    assert run.data.params["augment.strength"] == "1.0"
    assert run.data.params["model.net._target_"] == "pneumo.models.seed_cnn.SeedCNN"
    assert len(run.data.tags["git_commit"]) in (0, 40)
    assert run.data.tags["threshold.policy"] in ("sensitivity", "fixed")
    assert 0 <= float(run.data.tags["threshold.value"]) <= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "data", "figures"} <= artifacts
    # tracking.log_checkpoints=best with mlflow_model=true (the defaults): the best epoch's weights only, stored
    # once, as the MLflow model's artifact; checkpoints/ does not repeat them, and holds no last.ckpt
    assert "checkpoints" not in artifacts
    assert run.data.tags["best_checkpoint_uri"] == f"runs:/{run.info.run_id}/model"
    import torch

    from pneumo.tracking.registry import resolve_model_checkpoint

    checkpoint = resolve_model_checkpoint(run.data.tags["best_checkpoint_uri"], f"sqlite:///{tmp}/mlruns/mlflow.db",
                                          tmp / "model")
    assert checkpoint.name.startswith("best-epoch") and "=" not in checkpoint.name, checkpoint
    logged = torch.load(checkpoint, weights_only=True)
    assert {"state_dict", "pneumo"} <= set(logged) and "optimizer_states" not in logged and "loops" not in logged
    summary = json.loads(Path(client.download_artifacts(run.info.run_id, "data/summary.json", str(tmp))).read_text())
    assert sum(summary["counts"]["train"].values()) + sum(summary["counts"]["val"].values()) == 80


def test_mlflow_validation_figures_are_the_checkpoint_figures_at_its_threshold(trained):
    tmp, _ = trained
    import torch

    best = next((tmp / "run" / "checkpoints").glob("best-epoch*.ckpt"))
    stored = torch.load(best, map_location="cpu", weights_only=True)
    epoch, stored = stored["epoch"], stored["pneumo"]
    client = _client(tmp)
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    # Lightning logs `epoch` at the same MLflow step as each epoch-end figure.
    epoch_at_step = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "epoch")}
    at_epoch = {f"val/{name}": next((m.value for m in client.get_metric_history(run.info.run_id, f"val/{name}")
                                    if epoch_at_step.get(m.step) == epoch), math.nan)
                for name in ("threshold", "sensitivity", "specificity", "ppv", "npv", "accuracy", "auroc",
                             "sensitivity_at_0.5", "specificity_at_0.5", "ppv_at_0.5", "npv_at_0.5",
                             "accuracy_at_0.5")}
    assert at_epoch["val/threshold"] == pytest.approx(stored["threshold"]["value"])
    for key in ("sensitivity", "specificity", "ppv", "npv", "accuracy", "auroc"):
        # An undefined figure (NaN in the checkpoint) is not logged: nan_ok compares it with the missing value.
        assert at_epoch[f"val/{key}"] == pytest.approx(stored["validation"]["at_threshold"][key], nan_ok=True), key
        if key != "auroc":
            assert at_epoch[f"val/{key}_at_0.5"] == pytest.approx(stored["validation"]["at_0.5"][key],
                                                                 nan_ok=True), key


def test_training_ends_by_saying_where_things_went(trained):
    tmp, result = trained
    best = next((tmp / "run" / "checkpoints").glob("best-epoch*.ckpt"))
    assert f"Run folder: {tmp / 'run'}" in result.stdout
    assert f"Next: python evaluate.py ckpt={best}" in result.stdout
    assert "mlflow ui --backend-store-uri" in result.stdout


def test_training_writes_its_outputs_in_the_run_folder_only(trained):
    tmp, _ = trained
    run_dir = tmp / "run"
    assert (run_dir / "split.json").is_file() and (run_dir / "augmentation_grid.png").is_file()
    assert len(list((run_dir / "checkpoints").glob("best-epoch*.ckpt"))) == 1
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_evaluate_rebuilds_the_model_from_the_checkpoint_and_reports(trained):
    tmp, _ = trained
    best = next((tmp / "run" / "checkpoints").glob("best-epoch*.ckpt"))
    out = tmp / "eval"
    overrides = [o for o in isolated_overrides(tmp) if not o.startswith("hydra.run.dir")]
    result = run_entry_point("evaluate.py", f"ckpt={best}", *overrides, f"hydra.run.dir={out}",
                             "bootstrap.resamples=200")
    assert result.returncode == 0, result.stderr[-3000:]
    for label in ("Sensitivity (recall)", "Specificity", "AUROC", "true NORMAL", "true PNEUMONIA"):
        assert label in result.stdout
    report = json.loads((out / "metrics.json").read_text())
    assert report["n"]["total"] == 40
    cm = report["confusion_matrix"]
    assert cm["tp"] + cm["fn"] == report["n"]["positive"] and cm["tn"] + cm["fp"] == report["n"]["negative"]
    client = _client(tmp)
    runs = client.search_runs([client.get_experiment_by_name("pneumo-evaluation").experiment_id],
                              filter_string="tags.`pneumo.kind` = 'evaluation'")
    assert not client.search_runs([client.get_experiment_by_name("pneumo").experiment_id],
                                  filter_string="tags.`pneumo.kind` = 'evaluation'")
    assert len(runs) == 1 and runs[0].data.tags["pneumo.train_run_id"] == report["checkpoint"]["train_run"]
    assert runs[0].data.metrics["test/sensitivity"] == pytest.approx(report["metrics"]["sensitivity"]["value"])
    for name in ("sensitivity", "specificity", "ppv", "npv", "accuracy", "auroc", "tp", "fp", "tn", "fn"):
        assert f"test/{name}" in runs[0].data.metrics, name  # the same names as the training run's val/
    assert not {"test/recall", "test/precision", "test/acc"} & set(runs[0].data.metrics)  # one name a metric
    for name in ("roc.png", "pr.png", "confusion.png", "reliability.png", "score_histogram.png", "gallery.png",
                 "gradcam.png", "predictions.csv", "report.md", "report.html"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 7 and "<img alt='ROC curve" in page  # figures inside
    assert "](" not in page and "Sensitivity" in page  # no Markdown link text left
    assert f"Report: {out / 'report.html'}" in result.stdout
    assert report["threshold"]["policy"] == "sensitivity"  # chosen on validation, stored in the checkpoint
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "path,patient_id,label,probability,prediction" and len(rows) == 41
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/metrics.json", "report/report.md", "report/report.html", "report/roc.png"} <= logged


def test_training_logs_the_best_epoch_figures(trained):
    tmp, _ = trained
    assert (tmp / "run" / "val_best_roc.png").is_file() and (tmp / "run" / "val_best_confusion.png").is_file()


def test_predict_dir_scores_unlabelled_images(trained, tiny_root):
    tmp, _ = trained
    best = next((tmp / "run" / "checkpoints").glob("best-epoch*.ckpt"))
    folder = tmp / "unlabelled"
    folder.mkdir()
    for file in sorted((tiny_root / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]:
        (folder / file.name).write_bytes(file.read_bytes())
    (folder / "notes.txt").write_text("scanned on ward 3\n")  # not an image: left out and listed, not silently
    (folder / "._first.jpeg").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # a Mac's AppleDouble file
    out = tmp / "predict"
    result = run_entry_point("evaluate.py", f"ckpt={best}", f"predict_dir={folder}", "logger=none",
                             f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split(",") for line in (out / "predictions.csv").read_text().splitlines()[1:]]
    assert len(rows) == 3 and all(row[2] == "" and 0 <= float(row[3]) <= 1 for row in rows)
    assert not (out / "metrics.json").exists()
    skipped = (out / "skipped_files.txt").read_text()
    assert "notes.txt" in skipped and "._first.jpeg" in skipped and "left out 2 file(s)" in result.stdout


def test_evaluate_refuses_a_missing_checkpoint_clearly(tmp_path):
    result = run_entry_point("evaluate.py", f"ckpt={tmp_path}/nothing.ckpt", *isolated_overrides(tmp_path))
    assert result.returncode != 0
    assert f"{tmp_path}/nothing.ckpt does not exist" in result.stderr


def test_evaluate_on_another_data_set_reports_external_figures_beside_the_training_validation(trained):
    """External validation: a model trained on the Kaggle-layout folder, evaluated on a CSV-labelled table."""
    import csv
    import shutil

    tmp, _ = trained
    best = next((tmp / "run" / "checkpoints").glob("best-epoch*.ckpt"))
    images = tmp / "hospital_b" / "images"
    images.mkdir(parents=True)
    rows = []
    for index, source in enumerate(sorted((tmp / "cache" / "synthetic" / "test").rglob("*.jpeg"))):
        name = f"img{index:03d}.jpeg"
        shutil.copy(source, images / name)
        rows.append({"image": name, "finding": "pneumonia" if source.parent.name == "PNEUMONIA" else "clear",
                     "patient": f"p{index // 2}"})
    table = tmp / "hospital_b" / "labels.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "finding", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp / "external"
    overrides = [o for o in isolated_overrides(tmp) if not o.startswith("hydra.run.dir")]
    result = run_entry_point("evaluate.py", f"ckpt={best}", "data=table", "data.name=hospital_b",
                             f"data.csv={table}", f"data.image_dir={images}", "data.label.column=finding",
                             "data.label.positive=[pneumonia]", "data.patient_column=patient",
                             *overrides, f"hydra.run.dir={out}", "bootstrap.resamples=100", "gradcam.n=2")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    data = report["data"]
    assert data["external"] is True and data["name"] == "hospital_b" and data["split"] == "all"
    assert data["n_images"] == len(rows) == 40                          # every labelled image, no split carved
    assert data["n_positive"] == sum(r["finding"] == "pneumonia" for r in rows)
    assert data["training_data"]["name"] == "synthetic"
    validation = report["training_validation"]
    assert validation["n_images"] > 0 and 0 <= validation["at_threshold"]["auroc"] <= 1
    assert "another data set" in report["threshold"]["note"]
    assert "External data: hospital_b" in result.stdout and "training validation (synthetic" in result.stdout
    predictions = list(csv.DictReader((out / "predictions.csv").open()))
    assert {p["patient_id"] for p in predictions} == {r["patient"] for r in rows}  # from the table, not the name
    assert "external" in (out / "report.md").read_text()
    client = _client(tmp)
    [run] = client.search_runs([client.get_experiment_by_name("pneumo-evaluation").experiment_id],
                               filter_string="params.`data.name` = 'hospital_b'")
    assert run.data.params["data.external"] == "True" and run.data.params["data.n_images"] == "40"
    assert "training_val/auroc" in run.data.metrics and "test/auroc" in run.data.metrics


def test_evaluate_on_the_synthetic_dicom_table_through_the_entry_point(trained):
    """The RSNA preset's code path with real DICOM files: several CSV rows per image, MONOCHROME1, 12-bit, JPEG."""
    tmp, _ = trained
    best = next((tmp / "run" / "checkpoints").glob("best-epoch*.ckpt"))
    out = tmp / "external_dicom"
    overrides = [o for o in isolated_overrides(tmp) if not o.startswith("hydra.run.dir")]
    result = run_entry_point("evaluate.py", f"ckpt={best}", "data=synthetic_table",
                             "data.synthetic_table.n_images=60", *overrides, f"hydra.run.dir={out}",
                             "bootstrap.resamples=100", "gradcam.n=0")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["data"]["name"] == "synthetic_table" and report["data"]["external"] is True
    assert report["data"]["n_images"] == 60 and report["data"]["n_positive"] == 20
    written = (tmp / "cache" / "synthetic_table" / "stage_2_train_images").iterdir()
    assert sorted(p.suffix for p in written) == [".dcm"] * 60
    assert 0 <= report["metrics"]["auroc"]["value"] <= 1
