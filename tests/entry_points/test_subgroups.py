"""evaluate.py subgroups=[sex,age_band,view] through the entry points, on the demo DICOM table whose
headers carry PatientSex, PatientAge and ViewPosition; and the errors for data sets without them."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pneumo.data.attributes import age_band, sex_group
from pneumo.demo.synthetic_table import plan_table
from tests.conftest import isolated_overrides, run_entry_point

N_IMAGES = 120  # the demo table at test scale: 24 test images
TABLE = ["data=synthetic_table", f"data.synthetic_table.n_images={N_IMAGES}", "data.image_size=64"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("subgroups")
    result = run_entry_point("train.py", *TABLE, "trainer.max_epochs=1", *isolated_overrides(tmp))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, next((tmp / "run" / "checkpoints").glob("best-epoch*.ckpt"))


def _evaluate(tmp: Path, out: Path, *overrides: str):
    common = [o for o in isolated_overrides(tmp) if not o.startswith("hydra.run.dir")]
    return run_entry_point("evaluate.py", *overrides, *common, f"hydra.run.dir={out}", "bootstrap.resamples=200",
                           "gradcam.n=0")


def test_subgroup_results_reach_metrics_json_the_reports_the_plot_and_mlflow(trained):
    tmp, best = trained
    out = tmp / "evaluate"
    result = _evaluate(tmp, out, f"ckpt={best}", "subgroups=[sex,age_band,view]", "subgroup_min_size=10")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    subgroups, n = report["subgroups"], report["n"]["total"]
    assert list(subgroups) == ["sex", "age_band", "view"] and report["subgroup_settings"]["min_size"] == 10
    for attribute, groups in subgroups.items():  # every image in exactly one group of each attribute
        assert sum(entry["n"] for entry in groups.values()) == n, attribute
        assert sum(entry["positives"] for entry in groups.values()) == report["n"]["positive"], attribute
        for entry in groups.values():
            assert entry["small"] == (entry["n"] < 10)
    # By hand: each test image's groups from the demo's plan, its call from predictions.csv.
    plan = {image.patient_id: image for image in plan_table(0, N_IMAGES)}
    predictions = list(csv.DictReader((out / "predictions.csv").open()))
    threshold = report["threshold"]["value"]
    expected: dict[str, dict[str, list[tuple[int, bool]]]] = {"sex": {}, "age_band": {}, "view": {}}
    for row in predictions:
        image = plan[Path(row["path"]).stem]
        call = (int(row["label"]), float(row["probability"]) >= threshold)
        for attribute, group in (("sex", sex_group(image.sex)), ("age_band", age_band(image.age)),
                                 ("view", "PA" if image.index % 2 else "AP")):
            expected[attribute].setdefault(group, []).append(call)
    for attribute, groups in expected.items():
        assert set(groups) == set(subgroups[attribute]), attribute
        for group, calls in groups.items():
            entry, positives = subgroups[attribute][group], [called for label, called in calls if label == 1]
            assert (entry["n"], entry["positives"]) == (len(calls), len(positives))
            if positives:
                assert entry["sensitivity"]["value"] == pytest.approx(sum(positives) / len(positives))
            else:
                assert entry["sensitivity"]["reason"] == "only NORMAL in this group"
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (result.stdout, markdown, page):
        assert "Subgroups at the operating threshold" in text and "sex=F" in text and "view=AP" in text
        assert "subgroup_min_size=10" in text
    assert "![Subgroups:" in markdown and "(subgroups.png)" in markdown
    assert "alt='Subgroups:" in page and page.count("data:image/png;base64,") >= 5
    assert (out / "subgroups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # MLflow: the table travels as artifacts (metrics.json, report.*, subgroups.png), not as metrics.
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("pneumo-evaluation").experiment_id])
    assert "report/subgroups.png" in {item.path for item in client.list_artifacts(run.info.run_id, "report")}
    assert not [key for key in run.data.metrics if "subgroup" in key]


def test_a_kaggle_folder_named_on_the_command_line_is_refused_before_anything_runs(trained):
    tmp, best = trained
    out = tmp / "refused"
    result = _evaluate(tmp, out, f"ckpt={best}", "data=synthetic", "subgroups=[sex]")
    assert result.returncode == 2
    assert "the data set synthetic" in result.stderr and "it has: none" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_an_unknown_subgrouping_lists_the_known_ones(trained):
    tmp, best = trained
    result = _evaluate(tmp, tmp / "unknown", f"ckpt={best}", "subgroups=[sex,race]")
    assert result.returncode == 2
    assert "subgroups=" in result.stderr and "sex, age_band, view" in result.stderr


def test_a_checkpoint_trained_on_a_kaggle_folder_is_refused_once_read(trained, tmp_path):
    """Without data= the checkpoint's data config is evaluated, which only the run can read: a clear
    message and exit status 2, before any image is decoded. The checkpoint is this module's model with
    the stored data config of a model trained on the demo Kaggle folder (what train.py data=synthetic
    stores), to spare a second training run."""
    tmp, best = trained
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    config = checkpoint["pneumo"]["config"]
    config["data"] = {key: value for key, value in config["data"].items()
                      if key in ("_target_", "image_size", "channels", "batch_size", "cache", "cache_dir", "seed")}
    config["data"].update(source={"_target_": "pneumo.data.sources.KaggleFolder", "_partial_": True},
                          root=str(tmp_path / "chest_xray"))
    folder_ckpt = tmp_path / "folder-trained.ckpt"
    torch.save(checkpoint, folder_ckpt)
    out = tmp_path / "out"
    result = _evaluate(tmp, out, f"ckpt={folder_ckpt}", "subgroups=[sex]")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "the data set chest_xray" in result.stderr and "it has: none" in result.stderr
    assert "stored in the checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "predictions.csv").exists()


def test_a_mapped_column_missing_from_the_table_is_named_before_any_image_is_scored(trained):
    """The demo table's CSV has no 'Patient Gender': with the attributes read from the table instead of
    the DICOM headers, the message names the key and the columns there; exit 2, no traceback, no scores."""
    tmp, best = trained
    out = tmp / "no_column"
    result = _evaluate(tmp, out, f"ckpt={best}", "subgroups=[sex]", "data=synthetic_table",
                       f"data.synthetic_table.n_images={N_IMAGES}", "data.attributes.from=table",
                       "data.attributes.sex='Patient Gender'")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "no column 'Patient Gender' (data.attributes.sex)" in result.stderr
    assert "Traceback" not in result.stderr and not (out / "predictions.csv").exists()
