"""The Model Registry: versions registered from a run's pyfunc model resolve back to their checkpoint by alias or
number, on a real `mlflow server` and on a local store; every wrong URI is an error naming it and the fix."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from pneumo.command_line import command_line_problem
from pneumo.deploy.mlflow_model import log_pyfunc_model
from pneumo.deploy.registry import AliasMovedError, current_alias, move_alias, register_model, set_alias
from pneumo.models.checkpoints import load_checkpoint
from pneumo.tracking.logger import prepare_store
from pneumo.tracking.registry import ModelUriError, resolve_model, resolve_model_checkpoint
from tests.conftest import free_port


def register_checkpoint(tracking_uri: str, checkpoint: dict, name: str = "pneumo",
                        file_name: str = "best-epoch01.ckpt") -> str:
    """What train.py does with registry.register=true, for a checkpoint dict: a run, its pyfunc model, a
    registered version. Returns the version number. A sqlite store's experiment keeps its artifacts beside
    the database (file://<db folder>/artifacts), never under the working directory's ./mlruns; a server's go
    to its --artifacts-destination."""
    artifacts = None
    if tracking_uri.startswith("sqlite:///"):
        artifacts = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    prepare_store(tracking_uri, "pneumo", artifacts)
    client = MlflowClient(tracking_uri)
    if client.get_experiment_by_name("pneumo") is None:  # a server: prepare_store only creates sqlite stores
        client.create_experiment("pneumo")
    run_id = client.create_run(client.get_experiment_by_name("pneumo").experiment_id).info.run_id
    model_uri = log_pyfunc_model(tracking_uri, run_id, checkpoint, file_name)
    return str(register_model(tracking_uri, model_uri, name, run_id).version)


def _same_weights(path: Path, reference: dict) -> bool:
    logged = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(torch.equal(logged[key], value) for key, value in reference["state_dict"].items())


def test_versions_resolve_by_alias_and_number_on_a_real_server(trained_run, mlflow_server, tmp_path):
    best = load_checkpoint(trained_run.best)
    assert register_checkpoint(mlflow_server.uri, best) == "1"
    set_alias(mlflow_server.uri, "pneumo", 1)
    by_alias = resolve_model("models:/pneumo@champion", mlflow_server.uri, tmp_path / "alias")
    assert (by_alias.name, by_alias.version) == ("pneumo", "1")
    assert by_alias.checkpoint.is_relative_to(tmp_path / "alias") and _same_weights(by_alias.checkpoint, best)
    by_number = resolve_model_checkpoint("models:/pneumo/1", mlflow_server.uri, tmp_path / "number")
    assert _same_weights(by_number, best)
    version = MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri).get_model_version("pneumo", "1")
    assert version.tags["pneumo.train_run_id"] == by_alias.run_id
    with pytest.raises(ModelUriError, match=r"no alias 'staging'.*versions: 1; aliases: champion"):
        resolve_model_checkpoint("models:/pneumo@staging", mlflow_server.uri, tmp_path / "missing")


def test_every_wrong_model_uri_names_itself_and_the_fix(trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where MLflow would put a default ./mlflow.db if any call missed the store
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    register_checkpoint(uri, load_checkpoint(trained_run.best))
    assert not (tmp_path / "mlflow.db").exists()
    cases = {
        "models:/pneumo@champion": r"models:/pneumo@champion: .*has no alias 'champion' \(versions: 1; aliases: "
                                   r"none\)\. Fix: promote a version: python -m pneumo.promote name=pneumo",
        "models:/pnuemo/1": r"no model named 'pnuemo' \(it holds: pneumo\).*registry.register=true",
        "models:/pneumo/7": r"has no version 7 \(versions: 1",
        f"runs:/{'0' * 32}/model": r"has no run 0{32}",
        "models:/pneumo": r"'models:/pneumo' is not a model URI.*models:/NAME@ALIAS",
    }
    for model_uri, message in cases.items():
        with pytest.raises(ModelUriError, match=message):
            resolve_model_checkpoint(model_uri, uri, tmp_path / "dl")
    missing = tmp_path / "elsewhere" / "mlflow.db"
    with pytest.raises(ModelUriError, match=r"store sqlite:///.*elsewhere/mlflow.db does not exist"):
        resolve_model_checkpoint("models:/pneumo/1", f"sqlite:///{missing}")
    assert not missing.exists()  # no empty store left behind
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match=rf"tracking server {dead} is unreachable.*logger.tracking_uri"):
        resolve_model_checkpoint("models:/pneumo@champion", dead)


def test_the_command_line_takes_model_uris_and_refuses_malformed_ones():
    assert command_line_problem("evaluate", ["ckpt=models:/pneumo@champion"]) is None
    assert command_line_problem("evaluate", ["ckpt=models:/pneumo/3"]) is None
    assert command_line_problem("evaluate", [f"ckpt=runs:/{'a' * 32}/model"]) is None
    assert "is not a model URI" in command_line_problem("evaluate", ["ckpt=models:/pneumo"])
    assert "does not exist" in command_line_problem("evaluate", ["ckpt=no/such/file.ckpt"])
    assert "registry.name=pne/umo is not allowed" in command_line_problem("train", ["registry.name=pne/umo"])
    assert "registry.register=maybe is not allowed" in command_line_problem("train", ["registry.register=maybe"])


def test_the_champion_lookup_and_move_refuse_what_they_cannot_vouch_for(tmp_path, monkeypatch):
    """Only "no such model / alias" is "no champion"; any other failure is raised. The alias moves only if it
    still names the version the promotion compared with."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    prepare_store(uri, "pneumo", (tmp_path / "artifacts").as_uri())
    client = MlflowClient(uri, registry_uri=uri)
    assert current_alias(uri, "pneumo") is None  # no registered model
    client.create_registered_model("pneumo")
    for _ in range(3):
        client.create_model_version("pneumo", (tmp_path / "model").as_uri())
    assert current_alias(uri, "pneumo") is None  # no alias yet
    move_alias(uri, "pneumo", 1, "champion", expected=None)
    assert current_alias(uri, "pneumo").version == 1
    set_alias(uri, "pneumo", 2)  # another promotion, meanwhile
    with pytest.raises(AliasMovedError, match=r"pneumo@champion changed.*named version 1, now 2.*Nothing was moved"):
        move_alias(uri, "pneumo", 3, "champion", expected="1")
    assert current_alias(uri, "pneumo").version == 2

    def broken(*args, **kwargs):
        raise MlflowException("database is locked", error_code=INTERNAL_ERROR)

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", broken)
    with pytest.raises(MlflowException, match="database is locked"):
        current_alias(uri, "pneumo")  # the alias exists: the failure is not "no champion"
    monkeypatch.setattr(MlflowClient, "get_registered_model", broken)
    with pytest.raises(MlflowException, match="database is locked"):
        current_alias(uri, "pneumo")
    with pytest.raises(MlflowException, match="database is locked"):
        move_alias(uri, "pneumo", 3, "champion", expected="2")
    monkeypatch.undo()
    assert current_alias(uri, "pneumo").version == 2
