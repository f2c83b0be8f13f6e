"""The MLflow Model Registry as this project uses it: training registers its best model as a new version
of `registry.name`; the alias `champion` marks the version in use, moved only by the promotion
(`pneumo.deploy.promote`); every decision is written as tags on the challenger's version.

The tracking URI is also the registry URI (a sqlite store or a tracking server): one store holds the runs,
their models and the registered versions.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pneumo.tracking.registry import ModelUriError, store_client

log = logging.getLogger(__name__)

CHAMPION = "champion"
TAG_PREFIX = "pneumo."
ABSENT = "RESOURCE_DOES_NOT_EXIST"  # MlflowException.error_code of a model, version or run the store lacks


class AliasMovedError(RuntimeError):
    """The alias changed between the start of a promotion and the moment it would move it (another
    promotion ran meanwhile): nothing was moved."""


@contextmanager
def default_store(tracking_uri: str) -> Iterator[None]:
    """Make `tracking_uri` MLflow's default tracking store inside the block, and restore the caller's after.

    Why: MLflow 3.17.2 (pinned in requirements.txt) looks things up in the *default* store, not the
    client's, when a model is logged into a run (`mlflow.pyfunc.log_model`) or registered from a logged
    model into a sqlite registry (`create_model_version`). Its save-and-restore helper is private
    (`mlflow.tracking._tracking_service.utils._use_tracking_uri`), so it is imported here, in this one
    place: a newer MLflow that moves it breaks this function only.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # private: see the docstring

    with _use_tracking_uri(tracking_uri):
        yield


def registry_client(tracking_uri: str) -> MlflowClient:
    """A client whose registry is the tracking store (checked to exist or answer: see `store_client`)."""
    return store_client(tracking_uri)


def register_model(tracking_uri: str, model_uri: str, name: str, run_id: str,
                   tags: dict[str, str] | None = None, data_option: str | None = None) -> ModelVersion:
    """Register `model_uri` (the run's logged pyfunc model) as a new version of `name`, creating the
    registered model on first use; `tags` go on the version with `pneumo.train_run_id`. No alias is set:
    the champion changes only through `python -m pneumo.promote`, whose command is logged (with
    `data=<data_option>`, the data config the model was trained on, when given).

    Raises what MLflow raises when the store refuses (the training run calls this through its logger's guard).
    """
    client = registry_client(tracking_uri)
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != ABSENT:
            raise
        client.create_registered_model(name, description="Chest X-ray pneumonia classifiers trained by pneumo "
                                                          "(train.py registry.register=true)")
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None  # MLflow 3
    # A sqlite registry looks the logged model up in the *default* tracking store: make that this one.
    with default_store(tracking_uri):
        version = client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id,
                                              tags={f"{TAG_PREFIX}train_run_id": run_id, **(tags or {})})
    log.info("registered as %s version %s: promote it with\n  python -m pneumo.promote name=%s version=%s%s",
             name, version.version, name, version.version, f" data={data_option}" if data_option else "")
    return version


def get_version(tracking_uri: str, name: str, version: int | str) -> ModelVersion:
    """The ModelVersion `name`/`version`. Raises ModelUriError naming the versions that exist."""
    client = registry_client(tracking_uri)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        pass
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'", max_results=200))
    except MlflowException:
        versions = []
    raise ModelUriError(f"models:/{name}/{version} does not exist in {tracking_uri} (versions of {name!r}: "
                        f"{', '.join(map(str, versions)) or 'none'}). Fix: version=N of one that exists, or "
                        f"train with registry.register=true registry.name={name}")


def current_alias(tracking_uri: str, name: str, alias: str = CHAMPION) -> ModelVersion | None:
    """The version `alias` points to, or None when the store answers that the registered model does not
    exist or has no such alias. Any other failure (a database error, a server's 5xx) is raised: "no
    champion" would crown the challenger without a comparison."""
    client = registry_client(tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:  # a missing alias is INVALID_PARAMETER_VALUE in MLflow 3.17: ask again
        failure = error
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as error:
        if error.error_code == ABSENT:
            return None
        raise
    if alias not in aliases:
        return None
    raise failure


def set_alias(tracking_uri: str, name: str, version: int | str, alias: str = CHAMPION) -> None:
    """Point `alias` at `name`/`version` (an alias names one version: it leaves the previous one)."""
    registry_client(tracking_uri).set_registered_model_alias(name, alias, str(version))


def move_alias(tracking_uri: str, name: str, version: int | str, alias: str, expected: str | None) -> None:
    """`set_alias`, only if `alias` still names version `expected` (None: no version), as it did when the
    promotion read it. Raises AliasMovedError, moving nothing, when another promotion moved it since.
    (The registry has no compare-and-set: two promotions finishing within the same instant can still race.)"""
    now = current_alias(tracking_uri, name, alias)
    now_version = None if now is None else str(now.version)
    if now_version != (None if expected is None else str(expected)):
        raise AliasMovedError(f"{name}@{alias} changed during this promotion (it named version {expected}, now "
                              f"{now_version}): another promotion ran meanwhile. Nothing was moved; run "
                              f"python -m pneumo.promote name={name} version={version} again to compare with "
                              f"the new {alias}")
    set_alias(tracking_uri, name, version, alias)


def tag_version(tracking_uri: str, name: str, version: int | str, tags: dict[str, Any]) -> None:
    """Set `tags` (values as text, keys prefixed `pneumo.` unless they are) on `name`/`version`."""
    client = registry_client(tracking_uri)
    for key, value in tags.items():
        key = key if key.startswith(TAG_PREFIX) else TAG_PREFIX + key
        client.set_model_version_tag(name, str(version), key, str(value))
