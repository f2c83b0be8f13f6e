"""Command-line mistakes end with one message, exit code 2 and no traceback, before anything heavy is
imported, and leave nothing behind: no run folder, no sweep folder, no MLflow store."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pneumo.command_line import command_line_problem, composer, unknown_key_message
from pneumo.config import CONFIG_DIR
from pneumo.config_schema import SCHEMA
from tests.conftest import PROJECT_ROOT, isolated_overrides, run_entry_point

HEAVY = ("torch", "lightning", "mlflow", "torchvision", "scipy")


def _isolated(tmp: Path) -> list[str]:
    """Every folder a run (or a sweep) could write under `tmp`."""
    return [*isolated_overrides(tmp), f"hydra.sweep.dir={tmp}/multirun"]


def _refused(script: str, tmp: Path, *overrides: str) -> str:
    """Runs the entry point from an empty `tmp` and checks the refusal; returns its stderr."""
    work = tmp / "cwd"
    work.mkdir()
    result = run_entry_point(script, *overrides, *_isolated(tmp), cwd=work)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.startswith("Error: "), result.stderr[-3000:]
    assert result.stdout == ""
    left = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
    assert left == ["cwd"], f"left behind: {left}"  # no run folder, sweep folder, MLflow store or cache
    return result.stderr


def test_a_typo_in_a_key_names_it_and_the_close_valid_ones():
    message = unknown_key_message("train", ["trainer.max_epoch=3"])
    assert "unknown config key 'trainer.max_epoch'" in message and "did you mean trainer.max_epochs" in message
    assert "keys under trainer:" in message and "+trainer.max_epoch" in message
    assert unknown_key_message("train", ["trainer.max_epochs=3", "data=synthetic", "data.synthetic.n_train=9"]) is None
    assert unknown_key_message("train", ["+trainer.new_thing=1"]) is None  # added on purpose
    assert "model.net.dropout" in unknown_key_message("train", ["model.net.dropuot=0.1"])
    assert "or model?" in unknown_key_message("train", ["modle=baseline"])  # a group's name, mistyped
    assert "unknown config key 'trainer.nothing'" in unknown_key_message("train", ["~trainer.nothing"])


def test_typo_override_exits_before_anything_runs(tmp_path):
    stderr = _refused("train.py", tmp_path, "trainer.max_epoch=3")
    assert "did you mean trainer.max_epochs" in stderr


def test_a_wrong_type_names_the_key_the_value_what_is_allowed_and_the_fix(tmp_path):
    stderr = _refused("train.py", tmp_path, "trainer.max_epochs=abc")
    assert "trainer.max_epochs=abc is not allowed" in stderr
    assert "an integer >= 1" in stderr and "Fix: trainer.max_epochs=3" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_values_out_of_range_are_all_reported_in_one_message(tmp_path):
    stderr = _refused("train.py", tmp_path, "data.val_fraction=1.5", "module.threshold_policy=best",
                      "optim.lr=0", "trainer.precision=15")
    lines = stderr.strip().splitlines()
    assert len(lines) == 4, stderr
    assert lines[0].startswith("Error: ")
    assert "data.val_fraction=1.5 is not allowed: data.val_fraction takes a number in (0, 1)" in stderr
    assert "module.threshold_policy=best" in stderr and "sensitivity, fixed, youden" in stderr
    assert "optim.lr=0 is not allowed" in stderr and "a number > 0" in stderr
    assert "trainer.precision=15" in stderr and "bf16-mixed" in stderr


def test_evaluate_without_a_checkpoint_says_what_to_pass(tmp_path):
    stderr = _refused("evaluate.py", tmp_path)
    assert stderr.strip() == ("Error: evaluate.py needs ckpt=PATH to a .ckpt written by train.py (or ckpt=last, or "
                              "an MLflow model such as ckpt=models:/pneumo@champion)")


def test_unknown_model_or_data_lists_the_choices(tmp_path):
    for override, choices in (("model=resnet_typo", ["baseline", "resnet18"]),
                              ("data=kaggle", ["chest_xray", "synthetic"])):
        folder = tmp_path / override.split("=")[0]
        folder.mkdir()
        stderr = _refused("train.py", folder, override)
        assert len(stderr.strip().splitlines()) == 1, stderr
        assert f"unknown option {override}" in stderr
        assert all(choice in stderr for choice in choices), stderr


def test_missing_data_root_names_the_path_and_the_way_out(tmp_path):
    stderr = _refused("train.py", tmp_path, f"data.root={tmp_path}/absent")
    assert f"data root {tmp_path}/absent does not exist" in stderr and "data=synthetic" in stderr


def test_missing_checkpoint_and_predict_dir_are_named(tmp_path):
    stderr = _refused("evaluate.py", tmp_path, f"ckpt={tmp_path}/absent.ckpt", f"predict_dir={tmp_path}/nowhere")
    assert f"checkpoint {tmp_path}/absent.ckpt does not exist (ckpt=" in stderr and "ckpt=last" in stderr
    assert f"{tmp_path}/nowhere does not exist (predict_dir=" in stderr


def test_a_sweep_reports_its_bad_value_and_starts_no_job(tmp_path):
    stderr = _refused("train.py", tmp_path, "-m", "augment.strength=0,0.5,abc")
    assert "augment.strength=abc is not allowed" in stderr and "a number >= 0" in stderr
    assert "augment.strength=0.5" not in stderr


def test_several_values_without_multirun_say_how_to_sweep(tmp_path):
    stderr = _refused("train.py", tmp_path, "augment.strength=0,0.5")
    assert "add -m" in stderr and "augment.strength=[a,b]" in stderr


def test_an_override_hydra_cannot_parse_is_one_message(tmp_path):
    stderr = _refused("train.py", tmp_path, "trainer.max_epochs=[1")
    assert "override_grammar" in stderr and len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("script, argv", [
    ("train.py", ["trainer.max_epochs=abc"]),
    ("train.py", ["trainer.max_epoch=3"]),
    ("train.py", ["model=resnet_typo"]),
    ("train.py", ["-m", "augment.strength=0,abc"]),
    ("evaluate.py", []),
    ("evaluate.py", ["ckpt=/nonexistent/best.ckpt"]),
])
def test_the_check_imports_nothing_heavy(script, argv):
    """The entry point's own imports and its check, in a fresh interpreter: refused, with none of the
    heavy packages loaded."""
    code = ("import json, runpy, sys\n"
            f"sys.argv = [{script!r}, *{argv!r}]\n"
            "try:\n"
            f"    runpy.run_path({str(PROJECT_ROOT / script)!r}, run_name='__main__')\n"
            "    code = 0\n"
            "except SystemExit as exit:\n"
            "    code = exit.code\n"
            f"print(json.dumps({{'code': code, 'heavy': sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})}}))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=None,
                            check=False)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 2, result.stderr[-2000:]
    assert report["heavy"] == [], report["heavy"][:20]
    assert result.stderr.startswith("Error: ")


def test_what_is_right_passes(tmp_path):
    """hydra.* overrides untouched, `+` additions unchecked, `~` deletions, demo sets written where asked."""
    assert command_line_problem("train", [
        f"hydra.run.dir={tmp_path}/run", "hydra.job.chdir=false", "+trainer.new_thing=abc", "+data.test_fraction=abc",
        "~callbacks.augmentation_grid", "data=synthetic", f"data.root={tmp_path}/demo-written-here",
        "trainer.devices=[0]", "trainer.precision=bf16-mixed", "trainer.limit_train_batches=3"]) is None
    assert command_line_problem("train", ["data=synthetic_table", f"data.csv={tmp_path}/new.csv",
                                          f"data.image_dir={tmp_path}/new"]) is None
    assert command_line_problem("train", ["-m", "augment.strength=0,0.5,1", "model=baseline,resnet18"]) is None
    assert command_line_problem("train", ["-m", "optim.lr=interval(0.0001,0.1)", "data.batch_size=range(1,4)"]) is None
    assert command_line_problem("train", ["resume=last"]) is None
    assert command_line_problem("evaluate", ["ckpt=last", "batch_size=8", "bootstrap.resamples=10"]) is None
    assert command_line_problem("train", ["--help"]) is None  # Hydra answers it


def test_every_shipped_config_passes_the_schema():
    """The rules must not refuse the project's own configs: every option of every group, each experiment."""
    groups = {group.name: sorted(p.stem for p in group.glob("*.yaml"))
              for group in CONFIG_DIR.iterdir() if group.is_dir() and group.name != "hydra"}
    lines = [[f"{group}={option}"] for group, options in groups.items() for option in options]
    lines += [["data=synthetic", "logger=none"], ["debug=fast", "data=synthetic"]]
    for overrides in [[], *lines]:
        assert command_line_problem("train", overrides) is None, overrides
    assert command_line_problem("evaluate", ["ckpt=last"]) is None
    assert command_line_problem("evaluate", ["ckpt=last", "data=synthetic_table"]) is None
    assert command_line_problem("audit", []) is None and command_line_problem("audit", ["audit.fail_on=leak"]) is None
    assert command_line_problem("promote", ["version=1"]) is None
    with composer() as compose:  # the table covers keys that exist
        keys = {key for name in ("train", "evaluate", "audit")
                for key in _keys(compose(name, ["ckpt=x"] if name == "evaluate" else []))}
        keys |= _keys(compose("train", ["data=table"])) | _keys(compose("train", ["model=resnet18"]))
        keys |= _keys(compose("promote", ["version=1"]))
        keys |= _keys(compose("export", ["ckpt=x"])) | _keys(compose("predict", ["ckpt=x", "predict_dir=x"]))
    from pneumo.app.settings import register_config

    app = register_config()  # the review page's config lives in Hydra's config store (its `model` is a path)
    assert command_line_problem(app, ["model=models:/pneumo@champion"], config_dir=None) is None
    with composer(config_dir=None) as compose:
        keys |= _keys(compose(app, ["model=x"]))
    assert set(SCHEMA) <= keys, sorted(set(SCHEMA) - keys)


def _keys(cfg) -> set[str]:
    from omegaconf import OmegaConf

    from pneumo.config import flatten

    return set(flatten(OmegaConf.to_container(cfg, resolve=False)))
