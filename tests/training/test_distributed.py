"""DDP on CPU (gloo, 2 processes) under Hydra: one MLflow run per job, metrics synchronised across processes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import run_entry_point

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
TINY = ["data=synthetic", "data.synthetic.n_train=80", "data.synthetic.n_test=40", "data.synthetic.min_side=512",
        "data.synthetic.max_side=600", "data.image_size=64", "trainer.max_epochs=2"]


def _store(tmp: Path) -> list[str]:
    return [f"cache_dir={tmp}/cache", f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db",
            f"logger.artifact_location=file://{tmp}/art"]


def _check_synchronised(client: MlflowClient, run, tmp: Path) -> None:
    """Both processes' validation images are counted in every epoch, each exactly once."""
    summary = json.loads(Path(client.download_artifacts(run.info.run_id, "data/summary.json", str(tmp))).read_text())
    n_val = sum(summary["counts"]["val"].values())
    per_epoch: dict[int, float] = {}
    for key in ("val/tp", "val/fp", "val/tn", "val/fn"):
        for metric in client.get_metric_history(run.info.run_id, key):
            per_epoch[metric.step] = per_epoch.get(metric.step, 0) + metric.value
    assert len(per_epoch) == 2
    assert set(per_epoch.values()) == {n_val}, (per_epoch, n_val)


@pytest.mark.slow
def test_ddp_single_run_is_one_mlflow_run(tmp_path):
    result = run_entry_point("train.py", *DDP, *TINY, *_store(tmp_path), f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["trainer.strategy"] == "ddp_spawn"
    _check_synchronised(client, run, tmp_path)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_ddp_multirun_gives_one_run_per_job(tmp_path):
    result = run_entry_point("train.py", "-m", *DDP, *TINY, "augment.strength=0,1", *_store(tmp_path),
                             f"hydra.sweep.dir={tmp_path}/multi")
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = [r for r in client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
            if r.data.tags.get("pneumo.kind") != "sweep_summary"]
    assert sorted(r.info.run_name for r in runs) == ["augment.strength=0", "augment.strength=1"]
    for run in runs:
        assert run.info.status == "FINISHED"
        _check_synchronised(client, run, tmp_path)


@pytest.mark.slow
def test_ddp_with_a_frozen_backbone_switches_to_finding_unused_parameters(tmp_path):
    # Plain DDP stops at the first step when frozen parameters get no gradient.
    result = run_entry_point("train.py", *DDP, *TINY, "model.freeze_epochs=1", *_store(tmp_path),
                             f"hydra.run.dir={tmp_path}/run", "mlflow_model=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "using strategy ddp_spawn_find_unused_parameters_true" in result.stdout + result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "val/auroc")) == 2


@pytest.mark.slow
def test_ddp_counts_each_validation_image_once_and_matches_one_process(tmp_path):
    """An odd validation folder (4 NORMAL + 3 PNEUMONIA) on 2 processes: no image is repeated to even
    them out, and every figure equals a single-process evaluation of the same weights."""
    import numpy as np
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pneumo.demo.synthetic import ensure_synthetic_dataset
    from pneumo.evaluation.metrics import binary_metrics
    from pneumo.models.checkpoints import load_checkpoint, load_weights
    from pneumo.models.factory import build_module

    root = ensure_synthetic_dataset(tmp_path / "chest_xray", seed=5, n_train=32, n_val=7, n_test=4,
                                    min_side=256, max_side=300)
    assert sum(1 for _ in (root / "val").rglob("*.jpeg")) == 7
    result = run_entry_point("train.py", *DDP, f"data.root={root}", "data.val_strategy=folder", "data.image_size=64",
                             "trainer.max_epochs=1", "mlflow_model=false", *_store(tmp_path),
                             f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    logged = run.data.metrics
    assert sum(logged[f"val/{k}"] for k in ("tp", "fp", "tn", "fn")) == 7

    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(path)
    cfg = OmegaConf.create(checkpoint["pneumo"]["config"])
    module = build_module(cfg, train=False)
    load_weights(module, checkpoint, path)
    module.eval()
    datamodule = instantiate(OmegaConf.merge(cfg.data, {"output_dir": None}))
    datamodule.setup("fit")
    with torch.no_grad():
        scores = [(y, torch.sigmoid(module(module.preprocess(x, train=False)))) for x, y in datamodule.val_dataloader()]
    labels = torch.cat([y for y, _ in scores]).numpy()
    probs = torch.cat([p for _, p in scores]).numpy()
    assert len(labels) == 7
    single = binary_metrics(labels, probs, checkpoint["pneumo"]["threshold"]["value"])
    for key in ("sensitivity", "specificity", "accuracy", "auroc"):
        if np.isfinite(single[key]):
            assert logged[f"val/{key}"] == pytest.approx(single[key], abs=1e-6), key
    assert logged["val/threshold"] == pytest.approx(checkpoint["pneumo"]["threshold"]["value"])
