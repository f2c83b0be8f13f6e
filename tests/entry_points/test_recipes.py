"""The experiment/ and debug/ config groups: named recipes compose to what they promise, and run."""
from __future__ import annotations

import os
import subprocess

from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from pneumo.config import CONFIG_DIR
from tests.conftest import isolated_overrides, run_entry_point

TINY_DATA = ["data=synthetic", "data.synthetic.n_train=80", "data.synthetic.n_test=40",
             "data.synthetic.min_side=512", "data.synthetic.max_side=640", "data.image_size=64"]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_seed_keras_is_the_seed_set_up():
    cfg = _compose("experiment=seed_keras", "augment.strength=0.3")  # the command line still wins
    assert cfg.model.net._target_ == "pneumo.models.seed_cnn.SeedCNN" and cfg.data.image_size == 128
    assert cfg.model.in_channels == 3 and cfg.model.mean is None  # inputs in [0, 1] as in Keras
    assert (cfg.trainer.max_epochs, cfg.data.batch_size, cfg.optim.lr) == (3, 32, 0.001)
    assert cfg.optim._target_ == "torch.optim.Adam" and cfg.data.balance == "none"
    assert cfg.module.threshold_policy == "fixed" and cfg.augment.strength == 0.3
    assert _compose("experiment=seed_keras").augment.strength == 1.0


def test_efficientnet_finetune_freezes_then_fine_tunes_at_224():
    cfg = _compose("experiment=efficientnet_finetune")
    assert cfg.model.net.name == "efficientnet_lite0" and cfg.data.image_size == 224
    assert cfg.model.freeze_epochs == 1 and cfg.model.backbone_lr_scale == 0.1
    assert cfg.module.freeze_epochs == 1 and cfg.scheduler.T_max == cfg.trainer.max_epochs


def test_lightning_knobs_are_plain_overrides():
    cfg = _compose("trainer.limit_train_batches=3", "trainer.gradient_clip_val=1.0", "trainer.fast_dev_run=true",
                   "trainer.accumulate_grad_batches=2", "trainer.val_check_interval=0.5",
                   "trainer.check_val_every_n_epoch=2", "trainer.overfit_batches=1", "trainer.limit_val_batches=2")
    assert cfg.trainer.limit_train_batches == 3 and cfg.trainer.gradient_clip_val == 1.0
    assert cfg.trainer.fast_dev_run is True and cfg.trainer.accumulate_grad_batches == 2
    import lightning as L

    L.Trainer(**{k: v for k, v in cfg.trainer.items() if k != "_target_"}, logger=False)  # Lightning accepts them


def test_debug_fast_runs_a_few_batches_without_a_model_export(tmp_path):
    result = run_entry_point("train.py", "debug=fast", *TINY_DATA, "data.batch_size=8",
                             *isolated_overrides(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    assert run.data.params["trainer.limit_train_batches"] == "5"
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) < 5 + 1
    assert len(client.get_metric_history(run.info.run_id, "val/auroc")) == 1
    assert "model" not in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_debug_overfit_drives_one_batch_to_zero_loss(tmp_path):
    result = run_entry_point("train.py", "debug=overfit", *TINY_DATA, "data.batch_size=16",
                             *isolated_overrides(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
    assert losses[0] > 0.3 and losses[-1] < 0.05, losses


def test_outputs_go_under_the_project_wherever_the_run_starts(tmp_path, monkeypatch):
    from pneumo.config import PROJECT_ROOT

    monkeypatch.chdir(tmp_path)  # another working directory, as when a user starts train.py from elsewhere
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for name in ("train", "evaluate"):
            cfg = compose(config_name=name, return_hydra_config=True)
            assert cfg.hydra.run.dir.startswith(f"{PROJECT_ROOT}/outputs/"), (name, cfg.hydra.run.dir)
        assert compose(config_name="train", return_hydra_config=True).hydra.sweep.dir.startswith(
            f"{PROJECT_ROOT}/multirun/")


def test_the_printed_mlflow_command_works_without_an_activated_venv(tmp_path, monkeypatch):
    from pneumo.tracking.logger import ui_hint

    monkeypatch.chdir(tmp_path)
    command = ui_hint(f"sqlite:///{tmp_path}/mlflow.db", "1").splitlines()[0].split()[0]
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PATH")}
    result = subprocess.run([command, "--version"], env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 0 and "version" in result.stdout.lower(), result.stderr
