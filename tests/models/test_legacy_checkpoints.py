"""Checkpoints written before the library moved into subpackages name the old module paths in their stored
config (`pneumo.module.PneumoniaClassifier`, `pneumo.data.ChestXrayDataModule`, ...): they still evaluate,
resume and load."""
from __future__ import annotations

import importlib

import pytest
import torch
from omegaconf import OmegaConf

from pneumo.models.checkpoints import LEGACY_TARGETS, load_checkpoint, load_weights, upgrade_targets
from pneumo.models.factory import build_module
from tests.conftest import isolated_overrides, run_entry_point

TINY = ["data=synthetic", "data.synthetic.n_train=80", "data.synthetic.n_test=40", "data.synthetic.min_side=512",
        "data.synthetic.max_side=640", "data.image_size=64", "mlflow_model=false"]
OLD_NAMES = {new: old for old, new in LEGACY_TARGETS.items()}


def _downgrade(config):
    """The config as the flat-layout code wrote it: every _target_ under its old name."""
    if isinstance(config, dict):
        return {key: (OLD_NAMES.get(value, value) if key == "_target_" else _downgrade(value))
                for key, value in config.items()}
    if isinstance(config, list):
        return [_downgrade(value) for value in config]
    return config


def _targets(config) -> set[str]:
    if isinstance(config, dict):
        return {v for k, v in config.items() if k == "_target_"} | {t for v in config.values() for t in _targets(v)}
    if isinstance(config, list):
        return {t for v in config for t in _targets(v)}
    return set()


def test_every_old_name_is_gone_and_maps_to_an_importable_one():
    for old, new in LEGACY_TARGETS.items():
        old_module, new_module = old.rsplit(".", 1)[0], new.rsplit(".", 1)
        with pytest.raises((ModuleNotFoundError, AttributeError)):  # the old name no longer imports
            getattr(importlib.import_module(old_module), old.rsplit(".", 1)[1])
        assert hasattr(importlib.import_module(new_module[0]), new_module[1]), new


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("legacy")
    result = run_entry_point("train.py", *TINY, "trainer.max_epochs=1", *isolated_overrides(tmp))
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(tmp / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["pneumo"]["config"] = _downgrade(checkpoint["pneumo"]["config"])
    stored = _targets(checkpoint["pneumo"]["config"])
    assert {"pneumo.module.PneumoniaClassifier", "pneumo.models.SeedCNN", "pneumo.data.ChestXrayDataModule",
            "pneumo.transforms.BatchAugment"} <= stored
    path = tmp / "old-layout.ckpt"
    torch.save(checkpoint, path)
    return tmp, path


def test_an_old_checkpoint_loads_and_builds_in_python(old_checkpoint):
    _, path = old_checkpoint
    checkpoint = load_checkpoint(path)
    assert not _targets(checkpoint["pneumo"]["config"]) & set(LEGACY_TARGETS)
    module = build_module(OmegaConf.create(checkpoint["pneumo"]["config"]), train=False)
    load_weights(module, checkpoint, path)
    assert type(module).__module__ == "pneumo.training.module"
    assert upgrade_targets({"a": [{"_target_": "pneumo.sweep.SweepSummary"}]}) == {
        "a": [{"_target_": "pneumo.training.sweep.SweepSummary"}]}


def test_an_old_checkpoint_evaluates(old_checkpoint):
    tmp, path = old_checkpoint
    overrides = [o for o in isolated_overrides(tmp) if not o.startswith("hydra.run.dir")]
    result = run_entry_point("evaluate.py", f"ckpt={path}", *overrides, f"hydra.run.dir={tmp}/eval",
                             "bootstrap.resamples=50", "gradcam.n=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp / "eval" / "metrics.json").is_file()


def test_an_old_checkpoint_resumes(old_checkpoint):
    tmp, path = old_checkpoint
    overrides = [o for o in isolated_overrides(tmp) if not o.startswith("hydra.run.dir")]
    result = run_entry_point("train.py", *TINY, "trainer.max_epochs=2", f"resume={path}", *overrides,
                             f"hydra.run.dir={tmp}/resumed")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = load_checkpoint(tmp / "resumed" / "checkpoints" / "last.ckpt")
    assert resumed["epoch"] == load_checkpoint(path)["epoch"] + 1  # one more epoch than the old run had
