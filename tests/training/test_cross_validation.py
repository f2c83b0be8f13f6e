"""k-fold cross-validation end to end: a fold sweep ends with mean ± sd over folds and the pooled OOF AUROC."""
from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from pneumo.training.sweep import SWEEP_TAG
from tests.conftest import run_entry_point


def test_a_three_fold_sweep_summarizes_the_folds_and_the_pooled_out_of_fold_auroc(tmp_path):
    result = run_entry_point(
        "train.py", "-m", "data=synthetic", "data.synthetic.n_train=80", "data.synthetic.n_test=40",
        "data.synthetic.min_side=512", "data.synthetic.max_side=600", "data.image_size=32", "trainer.max_epochs=2",
        "mlflow_model=false", "data.n_folds=3", "data.fold=0,1,2", f"cache_dir={tmp_path}/cache",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"logger.artifact_location=file://{tmp_path}/art",
        f"hydra.sweep.dir={tmp_path}/multirun")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Cross-validation: 3 folds" in result.stdout and "Pooled out-of-fold AUROC" in result.stdout
    assert "INCOMPLETE" not in result.stdout

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    jobs = [r for r in runs if r.data.tags.get("pneumo.kind") != "sweep_summary"]
    [summary] = [r for r in runs if r.data.tags.get("pneumo.kind") == "sweep_summary"]
    assert sorted(r.data.params["data.fold"] for r in jobs) == ["0", "1", "2"]
    assert {r.data.tags[SWEEP_TAG] for r in jobs} == {summary.data.tags[SWEEP_TAG]}
    assert summary.data.metrics == {}  # still tags only
    assert sorted(a.path for a in client.list_artifacts(summary.info.run_id)) == [
        "cross_validation.json", "cross_validation.md", "sweep_summary.md"]
    cv = json.loads(open(client.download_artifacts(summary.info.run_id, "cross_validation.json", str(tmp_path)))
                    .read())[""]
    assert cv["n_folds"] == 3 and cv["complete"] is True and len(cv["folds"]) == 3
    aurocs = [fold["best_epoch"]["val/auroc"] for fold in cv["folds"]]
    assert cv["metrics"]["val/auroc"]["n_folds"] == 3
    assert cv["metrics"]["val/auroc"]["mean"] == pytest.approx(sum(aurocs) / 3)
    for name in ("val/sensitivity", "val/specificity", "val/ppv", "val/npv", "val/loss"):
        assert cv["metrics"][name]["n_folds"] == 3 and cv["metrics"][name]["sd"] >= 0
    # the values are the best epoch's (the highest val/auroc of the two), not the last epoch's
    for fold in cv["folds"]:
        history = client.get_metric_history(fold["run_id"], "val/auroc")
        assert len(history) == 2
        assert fold["best_epoch"]["val/auroc"] == pytest.approx(max(m.value for m in history))

    split = json.loads((tmp_path / "multirun" / "0" / "split.json").read_text())
    assert split["n_folds"] == 3 and split["fold"] == 0
    non_test = len(split["train"]) + len(split["val"])
    oof = cv["oof"]
    assert oof["n_images"] == non_test == oof["n_unique_paths"] == sum(f["n_oof"] for f in cv["folds"])
    low, high = oof["auroc_ci"]
    assert 0 <= low <= oof["auroc"] <= high <= 1
    tags = summary.data.tags
    assert float(tags["cv.auroc_oof"]) == pytest.approx(oof["auroc"], rel=1e-5)
    assert float(tags["cv.auroc_oof_ci_low"]) == pytest.approx(low, rel=1e-5) and tags["cv.n_oof"] == str(non_test)
    assert float(tags["cv.val/auroc.mean"]) == pytest.approx(cv["metrics"]["val/auroc"]["mean"], rel=1e-5)
    md = open(client.download_artifacts(summary.info.run_id, "cross_validation.md", str(tmp_path))).read()
    assert "| val/auroc |" in md and "±" in md and "Pooled out-of-fold AUROC" in md
