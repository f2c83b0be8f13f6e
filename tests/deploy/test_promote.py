"""Champion/challenger promotion: the paired bootstrap, the rule, and the alias moving (or not) in a real store
through `python -m pneumo.promote` and `run_promotion`."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from pneumo.command_line import command_line_problem, composer
from pneumo.config import PROJECT_ROOT
from pneumo.deploy.promote import check_held_out, decide, held_out_problem, paired_auroc_difference, run_promotion
from pneumo.evaluation.metrics import bootstrap_ci
from pneumo.models.checkpoints import load_checkpoint
from tests.deploy.test_registry import register_checkpoint


def test_paired_bootstrap_difference():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    champion = np.clip(0.5 * labels + rng.normal(0.25, 0.3, 120), 0, 1)
    same = paired_auroc_difference(labels, champion, champion, n_resamples=300)
    assert same["difference"] == 0 and same["interval_low"] == same["interval_high"] == 0
    # a challenger close to the champion: the pairing cancels what they share, so the interval of the
    # difference is far narrower than the champion's own AUROC interval
    close = np.clip(champion + rng.normal(0, 0.02, 120), 0, 1)
    paired = paired_auroc_difference(labels, close, champion, n_resamples=500)
    own = bootstrap_ci(labels, champion, 0.5, n_resamples=500)["auroc"]
    assert paired["interval_high"] - paired["interval_low"] < 0.3 * (own[1] - own[0])
    assert paired["interval_low"] <= paired["difference"] <= paired["interval_high"]
    better = paired_auroc_difference(labels, labels * 0.8 + 0.1, champion, n_resamples=300)
    assert better["auroc_challenger"] == 1.0 and better["interval_low"] > 0
    assert better["difference"] == pytest.approx(1.0 - paired["auroc_champion"])
    with pytest.raises(ValueError, match="one class only"):
        paired_auroc_difference(np.ones(10), champion[:10], champion[:10])


def test_the_rule():
    result = {"difference": -0.004, "interval_low": -0.03}
    assert not decide(result) and decide(result, margin=0.005)
    assert not decide(result, "interval", 0.02) and decide(result, "interval", 0.03)
    assert decide({"difference": 0.0, "interval_low": -0.1})  # equal is not worse
    with pytest.raises(ValueError, match="rule='best'"):
        decide(result, "best")


def _flipped(checkpoint: dict) -> dict:
    """The same model with its output negated (last layer's weight and bias): AUROC becomes 1 - AUROC."""
    flipped = copy.deepcopy(checkpoint)
    keys = list(flipped["state_dict"])[-2:]
    assert [tuple(flipped["state_dict"][k].shape)[0] for k in keys] == [1, 1]
    for key in keys:
        flipped["state_dict"][key] = -flipped["state_dict"][key]
    return flipped


def _promote(tmp_path, uri: str, tiny_root, *overrides: str) -> dict:
    args = ["data=chest_xray", f"data.root={tiny_root}", f"cache_dir={tmp_path}/cache", f"tracking_uri={uri}",
            "bootstrap.resamples=200", f"output_dir={tmp_path}/promote_{len(list(tmp_path.glob('promote_*')))}",
            *overrides]
    with composer() as compose:
        cfg = compose("promote", args)
    return run_promotion(cfg)


def _project_mlruns() -> set[str]:
    return {str(p) for p in (PROJECT_ROOT / "mlruns").rglob("*") if p.is_file()}


def test_champion_moves_only_when_the_challenger_is_not_worse(trained_run, tiny_root, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    project_mlruns = _project_mlruns()  # the models must go beside the test's store, not into the project's
    good = load_checkpoint(trained_run.best)
    assert [register_checkpoint(uri, c) for c in (good, _flipped(good), good)] == ["1", "2", "3"]
    client = MlflowClient(uri, registry_uri=uri)

    def champion() -> str:
        return str(client.get_model_version_by_alias("pneumo", "champion").version)

    # no champion yet: the command line makes version 1 champion
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.run([sys.executable, "-m", "pneumo.promote", "name=pneumo", "version=1", f"tracking_uri={uri}",
                            "data=chest_xray", f"data.root={tiny_root}", f"cache_dir={tmp_path}/cache",
                            f"hydra.run.dir={tmp_path}/cli"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Decision: first champion" in first.stdout and champion() == "1"
    recorded = json.loads((tmp_path / "cli" / "promotion.json").read_text())
    auroc = recorded["comparison"]["auroc_challenger"]
    assert auroc > 0.6 and recorded["data"]["n_images"] == 40

    # the flipped model is worse: rejected, the champion stays, the decision is on version 2
    rejected = _promote(tmp_path, uri, tiny_root, "version=2")
    comparison = rejected["comparison"]
    assert rejected["decision"] == "rejected" and champion() == "1"
    assert comparison["auroc_champion"] == pytest.approx(auroc, abs=1e-9)
    assert comparison["auroc_challenger"] == pytest.approx(1 - auroc, abs=1e-9)
    assert comparison["interval_low"] <= comparison["difference"] < 0
    out = capsys.readouterr().out
    assert f"difference (challenger - champion): {comparison['difference']:+.4f}" in out
    assert "Decision: rejected" in out and "stays version 1" in out
    tags = client.get_model_version("pneumo", "2").tags
    assert tags["pneumo.promotion"] == "rejected" and float(tags["pneumo.promotion.difference"]) < 0
    assert tags["pneumo.promotion.interval"].startswith("[") and "40 images" in tags["pneumo.promotion.data"]

    # force=true moves it anyway, and says so on the version
    forced = _promote(tmp_path, uri, tiny_root, "version=2", "force=true")
    assert forced["decision"] == "forced" and champion() == "2"
    tags = client.get_model_version("pneumo", "2").tags
    assert tags["pneumo.promotion"] == "forced" and tags["pneumo.promotion.rule_said"] == "rejected"
    assert client.get_model_version("pneumo", "1").tags["pneumo.promotion.replaced_by"] == "2"

    # the good model again beats the forced one; promoting the champion itself changes nothing
    promoted = _promote(tmp_path, uri, tiny_root, "version=3")
    assert promoted["decision"] == "promoted" and promoted["comparison"]["difference"] > 0 and champion() == "3"
    assert _promote(tmp_path, uri, tiny_root, "version=3")["decision"] == "unchanged"
    assert _project_mlruns() == project_mlruns
    assert list((tmp_path / "mlruns" / "artifacts").rglob("*.ckpt"))


def test_no_model_is_scored_on_images_it_trained_on(trained_run, tmp_path):
    """A table without official lists carves its test split from the seed: a model trained on that table
    with another seed is refused, naming the version and the fix; a folder's test/ is fixed."""
    config = load_checkpoint(trained_run.best)["pneumo"]["config"]
    with composer() as compose:
        table = compose("promote", ["version=2", "data=synthetic_table", f"cache_dir={tmp_path}"]).data
        folder = compose("promote", ["version=2", f"data.root={tmp_path}/kaggle", "seed=3"]).data
    carved = {"csv": str(table.csv), "official_split": None, "test_fraction": 0.2, "evaluate_split": "test"}

    def trained(seed: int, **data) -> SimpleNamespace:
        return SimpleNamespace(train_config=OmegaConf.create(
            {**config, "seed": seed, "data": {**config["data"], "seed": seed, **data}}))

    assert held_out_problem("2", trained(42, **carved).train_config, table) is None  # the seed it held out
    problem = held_out_problem("2", trained(7, **carved).train_config, table)
    assert "version 2 was trained on this data set" in problem and "with seed=7" in problem
    assert "carves it with seed=42" in problem and problem.endswith("Fix: seed=7 data.test_fraction=0.2")
    assert "data.test_fraction=0.3" in held_out_problem(
        "2", trained(42, **{**carved, "test_fraction": 0.3}).train_config, table)
    assert held_out_problem("2", trained(7, **{**carved, "csv": str(tmp_path / "other.csv")}).train_config,
                            table) is None  # another data set: an external check
    all_images = OmegaConf.merge(table, {"evaluate_split": "all"})
    assert "Fix: data.evaluate_split=test" in held_out_problem("2", trained(42, **carved).train_config, all_images)
    assert held_out_problem("2", trained(0, root=str(folder.root)).train_config, folder) is None  # test/ is fixed
    with pytest.raises(ValueError, match=r"version 3 was trained .* seed=7.*Fix: seed=7"):
        check_held_out({"3": trained(7, **carved), "1": trained(42, **carved)}, table)
    with pytest.raises(ValueError, match=r"seed=7.*seed=9.*no split of it is unseen by both"):
        check_held_out({"3": trained(7, **carved), "1": trained(9, **carved)}, table)


def test_promotion_command_line_mistakes_are_answered_before_any_work():
    assert "needs version=N" in command_line_problem("promote", [])
    assert "version=0 is not allowed" in command_line_problem("promote", ["version=0"])
    assert "rule=best is not allowed: rule takes one of point, interval" in command_line_problem(
        "promote", ["version=2", "rule=best"])
    assert "margin=-0.1 is not allowed" in command_line_problem("promote", ["version=2", "margin=-0.1"])
    assert "unknown config key 'forse'" in command_line_problem("promote", ["version=2", "forse=true"])
    assert command_line_problem("promote", ["version=2", "force=true", "data=synthetic"]) is None
