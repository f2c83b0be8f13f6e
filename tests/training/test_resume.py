"""Interruptions end in a checkpoint and a closed MLflow run; resume continues the same run exactly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from mlflow import MlflowClient

from pneumo.models.checkpoints import load_checkpoint
from pneumo.config import PROJECT_ROOT
from pneumo.data.datamodule import ChestXrayDataModule
from pneumo.models.seed_cnn import SeedCNN
from pneumo.training.module import PneumoniaClassifier
from tests.conftest import run_entry_point

METRICS = ("train/loss", "val/loss", "val/auroc", "val/tp", "val/fp")


def _args(tmp: Path) -> list[str]:
    return ["data=synthetic", "data.synthetic.n_train=200", "data.synthetic.n_test=40",
            "data.synthetic.min_side=512", "data.synthetic.max_side=600", "data.image_size=64",
            "data.batch_size=8", "trainer.max_epochs=3", "trainer.deterministic=true", f"cache_dir={tmp}/cache",
            f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db", f"logger.artifact_location=file://{tmp}/art"]


def _runs(tmp: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    return client, client.search_runs([client.get_experiment_by_name("pneumo").experiment_id],
                                      order_by=["attributes.start_time ASC"])


def _history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Per-step values. An epoch logged before a kill but after the checkpoint it resumes from is
    logged again on resume; deterministic training gives it the same value, so one entry per step."""
    history = {}
    for key in METRICS:
        by_step: dict[int, set[float]] = {}
        for metric in client.get_metric_history(run_id, key):
            by_step.setdefault(metric.step, set()).add(metric.value)
        assert all(len(values) == 1 for values in by_step.values()), (key, by_step)  # no conflicting values
        history[key] = sorted((step, values.pop()) for step, values in by_step.items())
    return history


def _start(tmp: Path, run_dir: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # A shell without job control starts background jobs with SIGINT ignored, and Python then installs
    # no Ctrl-C handler: give the run the default disposition a terminal user has.
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "train.py"), *_args(tmp),
                             f"hydra.run.dir={tmp}/{run_dir}", *extra], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One uninterrupted reference run; later tests add runs to the same store."""
    tmp = tmp_path_factory.mktemp("resume")
    result = run_entry_point("train.py", *_args(tmp), f"hydra.run.dir={tmp}/reference")
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp


def test_same_seed_and_deterministic_gives_identical_metrics_twice(store):
    result = run_entry_point("train.py", *_args(store), f"hydra.run.dir={store}/again")
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = _runs(store)
    first, second = (_history(client, run.info.run_id) for run in runs[-2:])
    assert first == second and len(first["val/auroc"]) == 3


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(store):
    client, before = _runs(store)
    reference = _history(client, before[0].info.run_id)
    process = _start(store, "killed")
    _wait_for(store / "killed" / "checkpoints" / "last.ckpt", process)
    time.sleep(0.3)  # into the second epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    client, runs = _runs(store)
    killed = runs[-1]
    assert len(client.get_metric_history(killed.info.run_id, "val/auroc")) < 3

    result = run_entry_point("train.py", *_args(store), f"hydra.run.dir={store}/resumed",
                             f"resume={store}/killed/checkpoints/last.ckpt")
    assert result.returncode == 0, result.stderr[-3000:]
    client, after = _runs(store)
    assert len(after) == len(runs)  # continued the same MLflow run, no second one
    resumed = client.get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert _history(client, killed.info.run_id) == reference


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_a_checkpoint_ends_killed_and_resumes(store, sig):
    name = f"stopped_{sig.name}"
    process = _start(store, name)
    _wait_for(store / name / "checkpoints" / "last.ckpt", process)
    time.sleep(0.3)  # into the second epoch, well before the third ends
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, output[-3000:]
    saved = store / name / "checkpoints" / "interrupted.ckpt"
    assert saved.is_file(), output[-2000:]
    assert f"resume={saved}" in output
    client, runs = _runs(store)
    run_id = load_checkpoint(saved)["pneumo"]["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"

    result = run_entry_point("train.py", *_args(store), f"hydra.run.dir={store}/{name}_resumed", f"resume={saved}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "val/auroc")) == 3


def test_a_crash_ends_the_run_failed(store):
    result = run_entry_point("train.py", *_args(store), f"hydra.run.dir={store}/crash",
                             "+module.bogus_argument=1")  # passes the command-line check, fails building the module
    assert result.returncode != 0 and "bogus_argument" in result.stderr
    client, runs = _runs(store)
    assert runs[-1].info.status == "FAILED"
    assert not [run for run in runs if run.info.status == "RUNNING"]


def test_a_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_root, tmp_path):
    class PoisonAtSecondEpoch(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 1:
                with torch.no_grad():
                    module.model.head[1].weight.fill_(float("nan"))

    dm = ChestXrayDataModule(str(tiny_root), image_size=64, batch_size=16, num_workers=0, cache="memory")
    module = PneumoniaClassifier(SeedCNN(64), optimizer=partial(torch.optim.Adam, lr=1e-3))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="good", save_last=True)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[checkpoint, PoisonAtSecondEpoch()])
    with pytest.raises(FloatingPointError, match=r"epoch 1, batch 0 \(global step \d+\)"):
        trainer.fit(module, datamodule=dm)
    kept = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert kept["epoch"] == 0
    assert all(torch.isfinite(value).all() for value in kept["state_dict"].values())


def test_resume_with_a_changed_setting_records_what_changed(store):
    """The MLflow run's params keep the first run's values; the resume's overrides and every changed
    setting are recorded beside them, so the run tells how it was produced."""
    first = run_entry_point("train.py", *_args(store), "trainer.max_epochs=1", f"hydra.run.dir={store}/short")
    assert first.returncode == 0, first.stderr[-3000:]
    last = store / "short" / "checkpoints" / "last.ckpt"
    resumed = run_entry_point("train.py", *_args(store), "trainer.max_epochs=2", f"resume={last}",
                              f"hydra.run.dir={store}/longer")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, runs = _runs(store)
    run = client.get_run(runs[-1].info.run_id)
    assert run.data.params["trainer.max_epochs"] == "1"  # MLflow params are written once
    assert "trainer.max_epochs=2" in run.data.tags["resume.overrides"]
    assert run.data.tags["resume.changed"] == "trainer.max_epochs"
    import json
    record = json.loads(Path(client.download_artifacts(run.info.run_id, "config/resume_1.json", str(store)))
                        .read_text())
    assert record["changed"] == {"trainer.max_epochs": {"before": 1, "after": 2}}
    assert record["resumed_from"] == str(last)
    assert len(client.get_metric_history(run.info.run_id, "val/auroc")) == 2
