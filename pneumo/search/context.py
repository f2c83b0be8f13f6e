"""The training job's side of a trial: which study it belongs to, and the link it reports through.

The sweeper and the job may be different processes (`hydra/launcher=joblib`), so no Optuna object is
passed: the sweeper puts the study's address in the environment (`PNEUMO_SEARCH`, JSON, inherited by
launcher workers; not in the job config, so a database password never reaches MLflow params) and the
trial number into the job's config as the hidden key `optuna.trial_number`. The job reconnects to the
storage with `TrialLink`, reports the objective after each validation epoch and asks whether to stop.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

SEARCH_ENV = "PNEUMO_SEARCH"
TRIAL_KEY = "optuna.trial_number"
RUN_ID_ATTR = "mlflow_run_id"  # the trial's user attribute naming its MLflow run
STATE_TAG = "optuna.state"

_STORAGES: dict[tuple[int, str], Any] = {}  # (process id, storage URL) -> the storage the trials report through
_STORAGES_LOCK = threading.Lock()


@dataclass(frozen=True)
class SearchContext:
    """A running search: storage URL (password included: keep out of logs), study name, pruner name and
    options, the objective's metric name, the MLflow parent run id (None without MLflow)."""

    storage: str
    study_name: str
    pruner: str = "none"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    objective: str = "val/auroc"
    parent_run_id: str | None = None

    def publish(self) -> None:
        """Into this process's environment, for the jobs it launches (and their worker processes)."""
        os.environ[SEARCH_ENV] = json.dumps(asdict(self))

    @classmethod
    def current(cls) -> SearchContext | None:
        """The search this process runs a trial of, or None outside a search."""
        text = os.environ.get(SEARCH_ENV)
        return cls(**json.loads(text)) if text else None


def trial_number(cfg: Any) -> int | None:
    """The trial number of a job config (`optuna.trial_number`), None outside a search."""
    optuna_node = cfg.get("optuna") if hasattr(cfg, "get") else None
    number = optuna_node.get("trial_number") if hasattr(optuna_node, "get") else None
    return int(number) if number is not None else None


def trial_tags(cfg: Any) -> dict[str, str]:
    """MLflow tags of a trial's run: its parent (the study's run), the study and the trial number.
    Empty outside a search."""
    context, number = SearchContext.current(), trial_number(cfg)
    if context is None or number is None:
        return {}
    tags = {"optuna.study_name": context.study_name, TRIAL_KEY: str(number)}
    if context.parent_run_id:
        tags["mlflow.parentRunId"] = context.parent_run_id
    return tags


def was_pruned(error: BaseException) -> bool:
    """Whether `error` is Optuna's TrialPruned (without importing Optuna when nothing did)."""
    import sys

    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(error, optuna.TrialPruned)


class TrialLink:
    """One trial, seen from its training job: `report(value, epoch)` stores the objective as an
    intermediate value and returns True when the pruner says stop; `record_run(run_id)` links the MLflow
    run to the trial (user attribute `mlflow_run_id`).

    The storage is opened once per process and URL (`link_storage`) and shared by every trial the process
    runs: with the in-process launcher a long search keeps one database engine, not one per trial.

    Raises KeyError when the study or the trial does not exist in the storage (a job config copied out of
    its search: run it without `optuna.trial_number`)."""

    def __init__(self, context: SearchContext, number: int) -> None:
        import optuna

        from pneumo.search.pruners import build_pruner

        self.storage = link_storage(context.storage)
        self.study = optuna.load_study(study_name=context.study_name, storage=self.storage,
                                       pruner=build_pruner(context.pruner, context.pruner_options))
        study_id = self.storage.get_study_id_from_name(context.study_name)
        self.trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        self.number = number

    def report(self, value: float, epoch: int) -> bool:
        """Store `value` at step `epoch`; True when the trial should stop now."""
        self.storage.set_trial_intermediate_value(self.trial_id, epoch, float(value))
        return bool(self.study.pruner.prune(self.study, self.storage.get_trial(self.trial_id)))

    def record_run(self, run_id: str) -> None:
        """Store the MLflow run id (str) as the trial's user attribute `mlflow_run_id`; raises Optuna's
        UpdateFinishedTrialError when the trial has already ended."""
        self.storage.set_trial_user_attr(self.trial_id, RUN_ID_ATTR, run_id)


def link_storage(url: str) -> Any:
    """The Optuna storage for `url` (a resolved storage URL) that this process's trials report through:
    opened on first use, then reused (an SQLAlchemy engine and its connection pool per process and URL,
    never one per trial). Keyed by process id too, so a forked launcher worker opens its own."""
    from pneumo.search.storage import open_storage

    key = (os.getpid(), url)
    with _STORAGES_LOCK:
        if key not in _STORAGES:
            _STORAGES[key] = open_storage(url)
        return _STORAGES[key]
