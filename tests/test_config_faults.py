"""Config mistakes end with one clear message and a non-zero exit, and leave no RUNNING MLflow run."""
from __future__ import annotations

from mlflow import MlflowClient

from pneumo.config import unknown_key_message
from tests.conftest import isolated_overrides, run_entry_point


def _no_running_runs(tmp) -> bool:
    db = tmp / "mlruns" / "mlflow.db"
    if not db.exists():
        return True
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("pneumo")
    return experiment is None or not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")


def test_a_typo_in_a_key_names_it_and_the_close_valid_ones():
    message = unknown_key_message("train", ["trainer.max_epoch=3"])
    assert "unknown config key 'trainer.max_epoch'" in message and "did you mean trainer.max_epochs" in message
    assert "keys under trainer:" in message and "+trainer.max_epoch" in message
    assert unknown_key_message("train", ["trainer.max_epochs=3", "data=synthetic", "data.synthetic.n_train=9"]) is None
    assert unknown_key_message("train", ["+trainer.new_thing=1"]) is None  # added on purpose
    assert "model.net.dropout" in unknown_key_message("train", ["model.net.dropuot=0.1"])


def test_typo_override_exits_before_anything_runs(tmp_path):
    result = run_entry_point("train.py", "trainer.max_epoch=3", *isolated_overrides(tmp_path))
    assert result.returncode == 2
    assert "did you mean trainer.max_epochs" in result.stderr
    assert _no_running_runs(tmp_path) and not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_unknown_model_or_data_lists_the_choices(tmp_path):
    for override, choices in (("model=resnet_typo", ["baseline"]), ("data=kaggle", ["chest_xray", "synthetic"])):
        result = run_entry_point("train.py", override, *isolated_overrides(tmp_path))
        assert result.returncode != 0
        assert all(choice in result.stderr for choice in choices), result.stderr[-1500:]
    assert _no_running_runs(tmp_path)


def test_missing_data_root_names_the_path_and_the_way_out(tmp_path):
    result = run_entry_point("train.py", f"data.root={tmp_path}/absent", *isolated_overrides(tmp_path))
    assert result.returncode != 0
    assert f"data root {tmp_path}/absent does not exist" in result.stderr and "data=synthetic" in result.stderr
    assert _no_running_runs(tmp_path)
