"""evaluate.py on degenerate labelled sets: one class, one image, equal scores, a class with one image.

Each set is a label table (CSV + images) written here from the synthetic set the module's model was
trained on, evaluated as external data the way a user would (`data=table data.csv=...`), so the path
runs through the real data module, the real checkpoint and the real MLflow store. Whatever the shape:
exit 0, predictions.csv for every image, valid JSON with every defined metric and null plus a reason for
the others, the figures the set allows, report.md saying what is left out and why, a FINISHED MLflow run.
"""
import csv
import json
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.conftest import isolated_overrides, run_entry_point
from tests.entry_points.test_end_to_end import TINY_DATA

ONLY_PNEUMONIA = "only PNEUMONIA in this set"
ONLY_NORMAL = "only NORMAL in this set"
NEED_BOTH = ("balanced_accuracy", "auroc", "auprc")
ALWAYS_DRAWN = ("confusion.png", "reliability.png", "score_histogram.png", "gallery.png", "gradcam.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("degenerate")
    result = run_entry_point("train.py", *TINY_DATA, "trainer.max_epochs=1", *isolated_overrides(tmp))
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = next((tmp / "run" / "checkpoints").glob("best-epoch*.ckpt"))
    sources = {name: sorted((tmp / "cache" / "synthetic" / "test" / name).glob("*.jpeg"))
               for name in ("NORMAL", "PNEUMONIA")}
    assert len(sources["NORMAL"]) >= 6 and len(sources["PNEUMONIA"]) >= 8, sources
    return tmp, checkpoint, sources


def _strict_json(path: Path) -> dict:
    """metrics.json as JSON proper: a NaN or Infinity token fails."""
    def refuse(token: str) -> None:
        raise AssertionError(f"{path} holds {token}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def _evaluate(trained, name: str, images: list[tuple[Path, int]], *extra: str):
    """Write `name`/labels.csv + images/ (grayscale PNGs, one patient per image) and run evaluate.py on it."""
    tmp, checkpoint, _ = trained
    folder = tmp / name / "images"
    folder.mkdir(parents=True)
    rows = []
    for index, (source, label) in enumerate(images):
        image = f"ext{index:03d}.png"
        with Image.open(source) as picture:
            picture.convert("L").save(folder / image)
        rows.append({"image": image, "label": label, "patient": f"P{index:03d}"})
    table = tmp / name / "labels.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp / name / "out"
    overrides = [o for o in isolated_overrides(tmp) if not o.startswith("hydra.run.dir")]
    result = run_entry_point("evaluate.py", f"ckpt={checkpoint}", "data=table", f"data.name={name}",
                             f"data.csv={table}", f"data.image_dir={folder}", "data.patient_column=patient",
                             *overrides, f"hydra.run.dir={out}", "bootstrap.resamples=200", "gradcam.n=2", *extra)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    predictions = list(csv.DictReader((out / "predictions.csv").open()))
    assert [int(p["label"]) for p in predictions] == [label for _, label in images]  # every image, in order
    report = _strict_json(out / "metrics.json")
    assert report["n"]["total"] == len(images) and report["data"]["external"] is True
    return result, out, report, predictions


def _mlflow_run(trained, name: str):
    tmp = trained[0]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    [run] = client.search_runs(experiments, filter_string=f"params.`data.name` = '{name}'")
    assert run.info.status == "FINISHED"
    return client, run


def _assert_defined_with_interval(entry: dict) -> None:
    lo, hi = entry["ci95"]
    assert entry["value"] is not None and lo - 1e-12 <= entry["value"] <= hi + 1e-12, entry


def _assert_undefined(report: dict, keys, reason: str, table: str, page: str) -> None:
    for key in keys:
        assert report["metrics"][key] == {"value": None, "ci95": None, "reason": reason}, key
    assert f"not defined ({reason})" in table and f"not defined ({reason})" in page


def _assert_curves_left_out(out: Path, report: dict, reason: str) -> None:
    assert not (out / "roc.png").exists() and not (out / "pr.png").exists()
    assert set(report["figures_left_out"]) == {"roc.png", "pr.png"}
    assert all(reason in why for why in report["figures_left_out"].values())
    page = (out / "report.md").read_text()
    assert "## Figures left out" in page and f"needs both classes; {reason}" in page
    assert "(roc.png)" not in page  # no link to a figure that was not drawn


def test_all_pneumonia_reports_sensitivity_and_ppv_and_leaves_out_what_needs_normal(trained):
    sources = trained[2]["PNEUMONIA"][:6]
    result, out, report, predictions = _evaluate(trained, "all_pneumonia", [(s, 1) for s in sources])
    assert len(predictions) == 6
    metrics, cm = report["metrics"], report["confusion_matrix"]
    _assert_defined_with_interval(metrics["sensitivity"])
    assert metrics["sensitivity"]["value"] == pytest.approx(cm["tp"] / 6)
    if cm["tp"]:
        assert metrics["ppv"]["value"] == 1.0 and metrics["ppv"]["ci95"] == [1.0, 1.0]
    else:
        assert "no image predicted PNEUMONIA" in metrics["ppv"]["reason"]
    page = (out / "report.md").read_text()
    _assert_undefined(report, ("specificity", *NEED_BOTH), ONLY_PNEUMONIA, result.stdout, page)
    for key in ("accuracy", "brier", "ece", "f1"):
        _assert_defined_with_interval(metrics[key])
    _assert_curves_left_out(out, report, ONLY_PNEUMONIA)
    for name in ALWAYS_DRAWN:
        assert (out / name).is_file(), name
    # The training run's validation figures beside these: the undefined ones say so, no crash, no 'nan'.
    assert "training validation (synthetic" in result.stdout and "nan" not in result.stdout.lower()
    comparison = result.stdout[result.stdout.index("training validation"):]
    assert "AUROC" in comparison and "not defined" in comparison.split("AUROC")[1].splitlines()[0]
    client, run = _mlflow_run(trained, "all_pneumonia")
    assert run.data.metrics["test/sensitivity"] == pytest.approx(metrics["sensitivity"]["value"])
    assert "test/auroc" not in run.data.metrics and "test/specificity" not in run.data.metrics
    assert "auroc: only PNEUMONIA in this set" in run.data.tags["pneumo.not_defined"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/predictions.csv", "report/metrics.json", "report/score_histogram.png"} <= logged
    assert "report/roc.png" not in logged


def test_all_normal_reports_specificity_and_leaves_out_what_needs_pneumonia(trained):
    sources = trained[2]["NORMAL"][:6]
    result, out, report, predictions = _evaluate(trained, "all_normal", [(s, 0) for s in sources])
    metrics, cm = report["metrics"], report["confusion_matrix"]
    _assert_defined_with_interval(metrics["specificity"])
    assert metrics["specificity"]["value"] == pytest.approx(cm["tn"] / 6)
    if cm["tn"]:
        assert metrics["npv"]["value"] == 1.0
    else:
        assert metrics["npv"]["reason"].startswith("no image predicted NORMAL at threshold")
    page = (out / "report.md").read_text()
    _assert_undefined(report, ("sensitivity", "f1", *NEED_BOTH), ONLY_NORMAL, result.stdout, page)
    _assert_curves_left_out(out, report, ONLY_NORMAL)
    for name in ALWAYS_DRAWN:
        assert (out / name).is_file(), name
    _, run = _mlflow_run(trained, "all_normal")
    assert "test/specificity" in run.data.metrics and "test/sensitivity" not in run.data.metrics


def test_one_image_reports_its_values_without_an_interval(trained):
    source = trained[2]["PNEUMONIA"][0]
    result, out, report, predictions = _evaluate(trained, "one_image", [(source, 1)])
    assert len(predictions) == 1 and 0 <= float(predictions[0]["probability"]) <= 1
    metrics = report["metrics"]
    assert metrics["sensitivity"]["value"] in (0.0, 1.0)
    for key in ("accuracy", "sensitivity", "brier", "ece"):
        entry = metrics[key]
        assert entry["value"] is not None and entry["ci95"] is None, key
        assert entry["ci_reason"] == "one image: every bootstrap resample is that image", key
    assert "no interval" in result.stdout and "one image: every bootstrap resample is that image" in result.stdout
    _assert_undefined(report, ("specificity", *NEED_BOTH), ONLY_PNEUMONIA, result.stdout,
                      (out / "report.md").read_text())
    for name in ALWAYS_DRAWN:
        assert (out / name).is_file(), name
    _, run = _mlflow_run(trained, "one_image")
    assert run.data.metrics["test/tp"] + run.data.metrics["test/fn"] == 1


def test_all_probabilities_equal_reports_chance_auroc_and_the_undefined_predictive_value(trained):
    """Six copies of one image, three labelled each way: one score, so one side of the threshold is empty."""
    source = trained[2]["NORMAL"][0]
    labels = [1, 0, 1, 0, 1, 0]
    result, out, report, predictions = _evaluate(trained, "equal_scores", [(source, y) for y in labels])
    assert len({p["probability"] for p in predictions}) == 1
    metrics = report["metrics"]
    assert metrics["auroc"]["value"] == 0.5 and metrics["auroc"]["ci95"] == [0.5, 0.5]
    assert metrics["sensitivity"]["value"] in (0.0, 1.0)
    assert metrics["specificity"]["value"] == 1.0 - metrics["sensitivity"]["value"]
    called = "PNEUMONIA" if metrics["sensitivity"]["value"] == 0.0 else "NORMAL"
    undefined = "ppv" if called == "PNEUMONIA" else "npv"
    assert metrics[undefined]["value"] is None
    assert metrics[undefined]["reason"].startswith(f"no image predicted {called} at threshold")
    assert f"not defined ({metrics[undefined]['reason']})" in result.stdout
    assert report["figures_left_out"] == {}
    for name in ("roc.png", "pr.png", *ALWAYS_DRAWN):
        assert (out / name).is_file(), name
    _, run = _mlflow_run(trained, "equal_scores")
    assert run.data.metrics["test/auroc"] == 0.5 and f"test/{undefined}" not in run.data.metrics


def test_a_class_with_one_image_reports_its_value_without_an_interval_and_says_so(trained):
    normal, pneumonia = trained[2]["NORMAL"][0], trained[2]["PNEUMONIA"][:7]
    result, out, report, predictions = _evaluate(trained, "single_normal",
                                                 [(normal, 0)] + [(s, 1) for s in pneumonia])
    assert len(predictions) == 8
    metrics = report["metrics"]
    assert metrics["specificity"]["value"] in (0.0, 1.0) and metrics["specificity"]["ci95"] is None
    assert metrics["specificity"]["ci_reason"] == "one NORMAL image: every bootstrap resample holds the same one"
    for key in ("sensitivity", "accuracy", "auroc", "balanced_accuracy", "brier"):
        _assert_defined_with_interval(metrics[key])
    assert any(note.startswith("one NORMAL image: the stratified bootstrap keeps it") for note in report["notes"])
    assert "Note: one NORMAL image" in result.stdout
    assert report["figures_left_out"] == {}
    for name in ("roc.png", "pr.png", *ALWAYS_DRAWN):
        assert (out / name).is_file(), name
    _, run = _mlflow_run(trained, "single_normal")
    assert math.isfinite(run.data.metrics["test/auroc"]) and "test/specificity" in run.data.metrics

