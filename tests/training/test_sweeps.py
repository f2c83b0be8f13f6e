"""Hydra multirun: one MLflow run per job, one sweep id, names that say what differs, a sorted summary."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from pneumo.training.sweep import summary_table, sweep_keys, SWEEP_TAG
from tests.conftest import run_entry_point


def test_sweep_keys_are_the_overrides_with_several_values():
    assert sweep_keys(["data=synthetic", "augment.strength=0,0.5,1", "optim.lr=1e-3,1e-4"]) == [
        "augment.strength", "optim.lr"]
    assert sweep_keys(["trainer.max_epochs=3"]) == []


def _run(name: str, auroc: float | None) -> SimpleNamespace:
    metrics = {} if auroc is None else {"val/auroc": auroc, "val/sensitivity": 0.9}
    return SimpleNamespace(info=SimpleNamespace(run_name=name, status="FINISHED"), data=SimpleNamespace(metrics=metrics))


def test_summary_table_is_sorted_by_the_objective_with_missing_values_last():
    table = summary_table([_run("a", 0.7), _run("b", None), _run("c", 0.9)], "val/auroc")
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == ["c", "a", "b"]
    ascending = summary_table([_run("a", 0.7), _run("c", 0.9)], "val/auroc", descending=False)
    assert [line.split("|")[1].strip() for line in ascending.splitlines()[2:]] == ["a", "c"]


@pytest.mark.slow
def test_four_parallel_joblib_jobs_share_one_sqlite_store(tmp_path):
    strengths = ["0", "0.5", "1", "1.5"]
    result = run_entry_point(
        "train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "data=synthetic",
        "data.synthetic.n_train=80", "data.synthetic.n_test=40", "data.synthetic.min_side=512",
        "data.synthetic.max_side=600", "data.image_size=32", "trainer.max_epochs=2",
        f"augment.strength={','.join(strengths)}", f"cache_dir={tmp_path}/cache",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"logger.artifact_location=file://{tmp_path}/art",
        f"hydra.sweep.dir={tmp_path}/multirun")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    jobs = [r for r in runs if r.data.tags.get("pneumo.kind") != "sweep_summary"]
    [summary] = [r for r in runs if r.data.tags.get("pneumo.kind") == "sweep_summary"]
    assert sorted(r.info.run_name for r in jobs) == sorted(f"augment.strength={s}" for s in strengths)
    assert {r.data.tags[SWEEP_TAG] for r in jobs} == {summary.data.tags[SWEEP_TAG]}
    for run in jobs:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val/auroc")) == 2
        # mlflow_model=true: the best weights are stored once, as the MLflow model's artifact
        assert run.data.tags["best_checkpoint_uri"] == f"runs:/{run.info.run_id}/model"
    weights = sorted(path.name for path in (tmp_path / "art").rglob("*.ckpt"))  # the four models' one file each
    assert len(weights) == 4 and all("=" not in name and name.startswith("best-epoch") for name in weights), weights
    assert [a.path for a in client.list_artifacts(summary.info.run_id)] == ["sweep_summary.md"]
    assert summary.data.metrics == {}  # no one-bar charts above the training runs' in the charts view
    best = max(jobs, key=lambda r: r.data.metrics["val/auroc"])
    assert float(summary.data.tags["best.val/auroc"]) == pytest.approx(best.data.metrics["val/auroc"], rel=1e-5)
    assert best.info.run_id in summary.data.tags["best.run"]
    assert "sorted by val/auroc" in result.stdout


# The Optuna search (hparams_search=optuna) is tested in tests/search/.


def test_launcher_configs_compose():
    from hydra import compose, initialize_config_dir

    from pneumo.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        slurm = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                        return_hydra_config=True)
        joblib = compose("train", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.partition == "gpu"
    assert slurm.hydra.launcher.gpus_per_node == 1
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher")


@pytest.mark.parametrize("override, shown", [
    ("optim.lr=0.0001329291894316216", "optim.lr=0.0001329"),  # a value a search drew
    ("model.net.dropout=0.5704285838459496", "model.net.dropout=0.5704"),
    ("augment.strength=0.5", "augment.strength=0.5"), ("augment.strength=0", "augment.strength=0"),
    ("optim.lr=1e-3", "optim.lr=0.001"), ("model=efficientnet_lite0", "model=efficientnet_lite0"),
    ("optuna.trial_number=12", "optuna.trial_number=12"),
])
def test_run_names_show_drawn_floats_to_four_digits(override, shown):
    from pneumo.training.run import _short

    assert _short(override) == shown
