"""The study's MLflow run: one parent run per study, every trial's training run a child of it.

The parent carries the tags `pneumo.kind=search`, `optuna.study_name`, `optuna.storage` (password masked),
`optuna.direction` and `optuna.objective`; a resumed search or a second worker finds it by those tags and
reopens it. At the end of each sweep it gets the best trial (`best.*` tags), the summary table and the
trials as CSV, and Optuna's plots (`pneumo.search.plots`) as artifacts. Trials' runs get the tag
`optuna.state` (COMPLETE, PRUNED, FAIL) once their trial has ended.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from pneumo.search.context import RUN_ID_ATTR, STATE_TAG, TRIAL_KEY

log = logging.getLogger(__name__)

KIND_TAG, KIND = "pneumo.kind", "search"


class StudyRun:
    """The parent run of study `study_name` in experiment `experiment_name` of the MLflow store at
    `tracking_uri`; created when none exists. When two workers create one at the same moment, both keep
    the older (start time, then run id) and the other is deleted, so a study has one parent run."""

    def __init__(self, tracking_uri: str, experiment_name: str, study_name: str, storage_shown: str,
                 objective: str, direction: str, artifact_location: str | None = None) -> None:
        from mlflow import MlflowClient

        from pneumo.tracking.logger import prepare_store

        prepare_store(tracking_uri, experiment_name, artifact_location if tracking_uri.startswith("sqlite") else None)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri, self.objective = tracking_uri, objective
        self.experiment_id = self.client.get_experiment_by_name(experiment_name).experiment_id
        self.tags = {KIND_TAG: KIND, "optuna.study_name": study_name, "optuna.storage": storage_shown,
                     "optuna.direction": direction, "optuna.objective": objective}
        found = self._parents()
        if not found:
            self.client.create_run(self.experiment_id, run_name=f"search {study_name}", tags=self.tags)
            found = self._parents()
        self.run_id = found[0].info.run_id
        for extra in found[1:]:  # created by another worker at the same moment: the oldest wins
            if not self._children_of(extra.info.run_id):
                self.client.delete_run(extra.info.run_id)
        self.client.update_run(self.run_id, "RUNNING")
        self.ended = False  # set once this worker has closed the run (finish or close)

    def _parents(self) -> list[Any]:
        filters = " and ".join(f"tags.`{key}` = '{value}'" for key, value in self.tags.items()
                               if key in (KIND_TAG, "optuna.study_name", "optuna.storage"))
        runs = self.client.search_runs([self.experiment_id], filter_string=filters)
        return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))

    def _children_of(self, run_id: str) -> list[Any]:
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")

    def children(self) -> list[Any]:
        """The trials' runs (all states)."""
        return self._children_of(self.run_id)

    def trial_run(self, trial) -> Any | None:
        """The MLflow run of a FrozenTrial: the one it recorded, else the newest child with its number."""
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id:
            return self.client.get_run(run_id)
        runs = [run for run in self.children() if run.data.tags.get(TRIAL_KEY) == str(trial.number)]
        return max(runs, key=lambda run: run.info.start_time) if runs else None

    def mark_trial(self, trial, state: str) -> None:
        """Tag the trial's run with its final Optuna state; a run still RUNNING (its process died) is closed
        as FAILED. Best effort: a missing run (the job failed before MLflow) is skipped."""
        run = self.trial_run(trial)
        if run is None:
            return
        self.client.set_tag(run.info.run_id, STATE_TAG, state)
        if run.info.status == "RUNNING" and state == "FAIL":
            self.client.set_terminated(run.info.run_id, "FAILED")

    def finish(self, study, summary_markdown: str) -> None:
        """Best trial as tags, the summary, the trials (CSV) and the plots as artifacts; status FINISHED."""
        from pneumo.search.plots import study_plots

        best = best_trial(study)
        if best is not None:
            tags = {"best.trial_number": str(best.number), f"best.{self.objective}": f"{best.value:.6g}"}
            tags |= {f"best.params.{key}": str(value) for key, value in best.params.items()}
            run = self.trial_run(best)
            if run is not None:
                tags["best.run"] = f"{run.info.run_name} ({run.info.run_id})"
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, value)
        with tempfile.TemporaryDirectory() as folder:
            summary = Path(folder) / "search_summary.md"
            summary.write_text(summary_markdown + "\n")
            self.client.log_artifact(self.run_id, str(summary))
            trials_csv = Path(folder) / "trials.csv"
            study.trials_dataframe().to_csv(trials_csv, index=False)
            self.client.log_artifact(self.run_id, str(trials_csv))
            for path in study_plots(study, Path(folder) / "plots"):
                self.client.log_artifact(self.run_id, str(path), "plots")
        self.client.set_terminated(self.run_id, "FINISHED")
        self.ended = True

    def close(self, status: str) -> None:
        """End the parent run early with MLflow status `status` (FAILED, KILLED) when the sweep itself
        stops; a no-op once this worker has ended it (FINISHED stays FINISHED). Raises MlflowException
        when the tracking store cannot be reached."""
        if not self.ended:
            self.client.set_terminated(self.run_id, status)
            self.ended = True


def best_trial(study):
    """The best COMPLETE trial, or None when there is none yet."""
    try:
        return study.best_trial
    except ValueError:
        return None
