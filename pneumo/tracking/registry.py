"""From an MLflow model URI to the weights-only checkpoint inside it.

`evaluate.py ckpt=models:/pneumo@champion` (or `models:/pneumo/3`, `runs:/RUN_ID/model`), the review page's
`model=models:/...` and the promotion all go through `resolve_model_checkpoint`: the model's artifacts are
downloaded and the path of its checkpoint (the pyfunc model's one artifact, `pneumo.deploy.mlflow_model`)
is returned, ready for `pneumo.evaluation.trained.load_trained`.

A name, alias, version or run that does not exist, or a store that cannot be reached, is a
`ModelUriError` / `ConnectionError` naming the URI, the store and the fix, before anything is downloaded.
Imports MLflow and `pneumo.tracking.logger` only.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException

from pneumo.tracking.logger import server_problem

MODEL_ARTIFACT_PATH = "model"       # runs:/RUN_ID/model
CHECKPOINT_ARTIFACT = "checkpoint"  # the pyfunc model's artifact name for the weights-only checkpoint
URI_FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model"
_MODELS = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")
_RUNS = re.compile(r"^runs:/(?P<run_id>[0-9a-f]{32})(?:/(?P<path>.+?))?/?$")


class ModelUriError(LookupError):
    """A model URI that is malformed or names nothing in the store; the message says what exists and the fix."""


@dataclass(frozen=True)
class ResolvedModel:
    """What a model URI named: the local checkpoint, and for models:/ URIs the registered name and version
    (the alias resolved once, so the caller reports the version it really loaded)."""

    uri: str
    checkpoint: Path
    name: str | None = None
    version: str | None = None
    run_id: str | None = None


def is_model_uri(value: str) -> bool:
    """Whether a `ckpt=` / `model=` value is an MLflow URI rather than a file path."""
    return str(value).startswith(("models:/", "runs:/"))


def resolve_model_checkpoint(uri: str, tracking_uri: str, dst: Path | None = None) -> Path:
    """The local weights-only checkpoint of `uri` (models:/NAME@ALIAS, models:/NAME/VERSION,
    runs:/RUN_ID/model, or runs:/RUN_ID/PATH/TO.ckpt), downloaded into `dst` (a new temporary folder when
    None). `tracking_uri` is both the tracking and the registry store (sqlite:///... or http://...).

    Raises:
        ModelUriError: a malformed URI, a missing store file, or a name, alias, version or run the store
            does not hold; or a model without a pneumo checkpoint (the message names it and the fix).
        ConnectionError: an http(s) tracking server that does not answer.
    """
    return resolve_model(uri, tracking_uri, dst).checkpoint


def resolve_model(uri: str, tracking_uri: str, dst: Path | None = None) -> ResolvedModel:
    """`resolve_model_checkpoint` with what the URI named (registered name, version, source run)."""
    models, runs = _MODELS.match(uri), _RUNS.match(uri)
    if not models and not runs:
        raise ModelUriError(f"{uri!r} is not a model URI this project reads: write {URI_FORMS} "
                            f"(or pass a .ckpt file's path)")
    client = store_client(tracking_uri, uri)
    name = version = None
    if models:
        name = models["name"]
        found = _model_version(client, uri, tracking_uri, name, models["alias"], models["version"])
        version, run_id = str(found.version), found.run_id
        location = _source_location(client, uri, tracking_uri, str(found.source))
    else:
        run_id = runs["run_id"]
        location = _run_location(client, uri, tracking_uri, run_id, runs["path"] or MODEL_ARTIFACT_PATH)
    folder = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="pneumo-model-"))
    try:  # a plain artifact location: MLflow's models:/ resolution would consult the default store, not this one
        checkpoint = _download_checkpoint(location, folder, tracking_uri, uri)
    except MlflowException as error:
        raise ModelUriError(f"{uri}: its files at {location} could not be downloaded from {tracking_uri} "
                            f"({str(error).splitlines()[0][:200]})") from None
    return ResolvedModel(uri=uri, checkpoint=checkpoint, name=name, version=version, run_id=run_id)


def _download_checkpoint(location: str, folder: Path, tracking_uri: str, uri: str) -> Path:
    """The checkpoint at `location` (a .ckpt, or a model folder) downloaded into `folder`: for a model, its
    MLmodel file first and then only the one artifact it names, not the model's copy of the code (about 130
    files). Raises ModelUriError (see `_checkpoint_in`), MlflowException when a download fails."""
    def fetch(artifact_uri: str, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        return Path(download_artifacts(artifact_uri=artifact_uri, dst_path=str(into), tracking_uri=tracking_uri))

    if location.endswith(".ckpt"):
        return fetch(location, folder)
    base = location.rstrip("/")
    try:
        fetch(f"{base}/MLmodel", folder)
    except MlflowException:  # no MLmodel: a folder that is not a model, said by _checkpoint_in
        return _checkpoint_in(folder, uri)
    named = _checkpoint_artifact(folder / "MLmodel")
    if named is None:
        return _checkpoint_in(folder, uri)
    return fetch(f"{base}/{named}", folder / Path(named).parent)


def _checkpoint_artifact(mlmodel: Path) -> str | None:
    """The relative path of the pyfunc model's checkpoint artifact that an MLmodel file names, or None."""
    flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
    artifact = (flavors.get("python_function", {}).get("artifacts") or {}).get(CHECKPOINT_ARTIFACT)
    return str(artifact["path"]) if artifact and artifact.get("path") else None


def store_client(tracking_uri: str, uri: str | None = None) -> MlflowClient:
    """A client on `tracking_uri` (tracking and registry), after checking that the store is there:
    MlflowClient would create an empty sqlite file, and retry a dead server for minutes. `uri`: what is
    being looked up, named in the messages. Raises ModelUriError (no sqlite file), ConnectionError."""
    uri = uri or "the registry"
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        if not database.is_file():
            raise ModelUriError(f"{uri}: the MLflow store {tracking_uri} does not exist ({database} is missing). "
                                f"Fix: point logger.tracking_uri at the store the model was logged to")
    elif tracking_uri.startswith("http"):
        problem = server_problem(tracking_uri)
        if problem:
            raise ConnectionError(f"{uri}: the MLflow tracking server {tracking_uri} is unreachable ({problem}). "
                                  f"Start it, or fix logger.tracking_uri")
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _model_version(client: MlflowClient, uri: str, tracking_uri: str, name: str, alias: str | None,
                   version: str | None):
    """The ModelVersion `name`@`alias` or `name`/`version`; ModelUriError listing what exists otherwise."""
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        pass
    try:
        client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise ModelUriError(f"{uri}: the registry of {tracking_uri} has no model named {name!r} (it holds: "
                            f"{', '.join(names) or 'none'}). Fix: register one with train.py registry.register=true "
                            f"registry.name={name}, or correct the name") from None
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'", max_results=200))
    aliases = sorted(client.get_registered_model(name).aliases)
    what = f"no alias {alias!r}" if alias else f"no version {version}"
    fix = (f"promote a version: python -m pneumo.promote name={name} version=N (or use models:/{name}/VERSION)"
           if alias else f"use one of its versions, or models:/{name}@ALIAS")
    raise ModelUriError(f"{uri}: the registered model {name!r} in {tracking_uri} has {what} (versions: "
                        f"{', '.join(map(str, versions)) or 'none'}; aliases: {', '.join(aliases) or 'none'}). "
                        f"Fix: {fix}") from None


def _source_location(client: MlflowClient, uri: str, tracking_uri: str, source: str) -> str:
    """Where a registered version's files are: a logged model's artifact location (models:/m-ID, MLflow 3),
    a run's artifacts (runs:/ID/PATH, versions registered from a run path) or the plain URI itself."""
    if source.startswith("models:/"):
        return client.get_logged_model(source.removeprefix("models:/").strip("/")).artifact_location
    runs = _RUNS.match(source)
    if runs:
        return _run_location(client, uri, tracking_uri, runs["run_id"], runs["path"] or MODEL_ARTIFACT_PATH)
    return source


def _run_location(client: MlflowClient, uri: str, tracking_uri: str, run_id: str, path: str) -> str:
    """The artifact location of `path` in run `run_id`: the logged model of that name the run produced
    (MLflow 3 keeps models beside the run), else the run's own artifact at `path`."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ModelUriError(f"{uri}: the store {tracking_uri} has no run {run_id}. Fix: copy the run id from "
                            f"train.py's output or the MLflow UI, or point logger.tracking_uri at the store the "
                            f"run was logged to") from None
    head, _, rest = path.partition("/")
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id], filter_string=f"name = '{head}'")
    for model in models:
        if model.source_run_id == run_id:
            return model.artifact_location.rstrip("/") + (f"/{rest}" if rest else "")
    return f"{run.info.artifact_uri.rstrip('/')}/{path}"


def _checkpoint_in(local: Path, uri: str) -> Path:
    """The checkpoint a downloaded model folder names in its MLmodel file (or the file itself when the URI
    named a .ckpt). Raises ModelUriError when the folder holds no pneumo checkpoint."""
    if local.is_file():
        return local
    mlmodel = local / "MLmodel"
    named = _checkpoint_artifact(mlmodel) if mlmodel.is_file() else None
    if named and (local / named).is_file():
        return local / named
    raise ModelUriError(f"{uri} holds no pneumo checkpoint (no '{CHECKPOINT_ARTIFACT}' artifact in its MLmodel: "
                        f"a model logged before the pyfunc model, or not by train.py). Fix: evaluate the run's "
                        f"checkpoint file instead (ckpt=runs:/RUN_ID/checkpoints/best-epochNN.ckpt, or "
                        f"ckpt=PATH from its run folder)")


def default_tracking_uri(explicit: str | None) -> str:
    """The store a model URI is looked up in: `explicit` when given, else MLFLOW_TRACKING_URI, else the
    project's sqlite:///<project>/mlruns/mlflow.db. The one rule for evaluate.py and bulk prediction."""
    import os

    from pneumo.paths import PROJECT_ROOT

    if explicit:
        return str(explicit)
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT}/mlruns/mlflow.db"
