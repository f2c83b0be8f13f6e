"""Hydra multirun glue: one sweep id for all jobs, run names that say what differs, a summary at the end."""
from __future__ import annotations

import logging
import os
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SWEEP_ID_ENV = "PNEUMO_SWEEP_ID"
SWEEP_KEYS_ENV = "PNEUMO_SWEEP_KEYS"
SWEEP_TAG = "pneumo.sweep_id"


def sweep_keys(overrides: list[str]) -> list[str]:
    """The keys a command line sweeps over (`augment.strength=0,0.5` -> `augment.strength`)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]


class SweepSummary(Callback):
    """Before a multirun: a sweep id every job tags its MLflow run with (jobs inherit the environment,
    also under the joblib launcher). After it: the sweep's runs, sorted by the objective, printed and
    logged to MLflow as a summary run; after an Optuna search (hparams_search=...), nothing: the search
    reports on its whole study itself (pneumo.search)."""

    def __init__(self, objective: str = "val/auroc", mode: str = "max") -> None:
        self.objective, self.descending = objective, mode == "max"

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_id = f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        os.environ[SWEEP_ID_ENV] = sweep_id
        os.environ[SWEEP_KEYS_ENV] = ",".join(sweep_keys(list(config.hydra.overrides.task)))
        log.info("sweep %s: every run carries the MLflow tag %s=%s", sweep_id, SWEEP_TAG, sweep_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from pneumo.search.context import SEARCH_ENV

        sweep_id = os.environ.get(SWEEP_ID_ENV)
        if not sweep_id or not config.get("logger"):
            return
        sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
        if os.environ.get(SEARCH_ENV) or "pneumo_optuna_sweeper" in sweeper:  # an Optuna search: its sweeper
            return  # printed the study's table and filled the study's MLflow parent run (spanning resumed sweeps)
        from mlflow import MlflowClient

        from pneumo.tracking.logger import ui_hint

        client = MlflowClient(tracking_uri=config.logger.tracking_uri)
        experiment = client.get_experiment_by_name(config.logger.experiment_name)
        if experiment is None:
            return
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep_id}'")
        runs = [r for r in runs if r.data.tags.get("pneumo.kind") != "sweep_summary"]
        table = summary_table(runs, self.objective, self.descending)
        print(f"\nSweep {sweep_id}: {len(runs)} runs, sorted by {self.objective}\n{table}")
        summary = client.create_run(experiment.experiment_id, run_name=f"sweep {sweep_id} summary",
                                    tags={SWEEP_TAG: sweep_id, "pneumo.kind": "sweep_summary"})
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "sweep_summary.md"
            path.write_text(f"# Sweep {sweep_id}, sorted by {self.objective}\n\n{table}\n")
            client.log_artifact(summary.info.run_id, str(path))
            for path in self._cross_validation(client, runs, summary.info.run_id, Path(folder)):
                client.log_artifact(summary.info.run_id, str(path))
        # Tags, not metrics: a metric would add a one-bar chart per summary above the training runs' charts.
        scored = [r for r in runs if self.objective in r.data.metrics]
        if scored:
            pick = max if self.descending else min
            best = pick(scored, key=lambda r: r.data.metrics[self.objective])
            client.set_tag(summary.info.run_id, f"best.{self.objective}", f"{best.data.metrics[self.objective]:.6g}")
            client.set_tag(summary.info.run_id, "best.run", f"{best.info.run_name} ({best.info.run_id})")
        client.set_terminated(summary.info.run_id, "FINISHED")
        print(f"Filter the sweep in the UI with: tags.`{SWEEP_TAG}` = '{sweep_id}'\n"
              f"{ui_hint(config.logger.tracking_uri, experiment.experiment_id)}")


    def _cross_validation(self, client: Any, runs: list[Any], summary_id: str, folder: Path) -> list[Path]:
        """A k-fold sweep (runs with data.n_folds): per configuration, mean ± sd over folds and the pooled
        out-of-fold AUROC, printed, tagged cv.* on the summary run; returns the artifacts to log."""
        from pneumo.training import folds

        if not folds.is_cross_validation(runs):
            return []
        swept = [key for key in os.environ.get(SWEEP_KEYS_ENV, "").split(",") if key]
        groups = folds.group_runs(runs, swept)
        summaries = {label: folds.summarize_folds(client, group, self.objective, self.descending)
                     for label, group in groups.items()}
        markdown = "\n\n".join(folds.summary_markdown(s, f"Cross-validation {label}".strip())
                                 for label, s in summaries.items())
        print(f"\n{markdown}\n")
        for number, (label, result) in enumerate(summaries.items()):
            prefix = "cv" if len(summaries) == 1 else f"cv.{number}"
            tags = folds.summary_tags(result, prefix) | ({f"{prefix}.config": label} if label else {})
            for key, value in tags.items():
                client.set_tag(summary_id, key, value)
        return folds.write_artifacts(folder, summaries, markdown)


def summary_table(runs: list[Any], objective: str, descending: bool = True) -> str:
    """A Markdown table of the sweep's runs, best first; runs without the metric last."""
    def key(run: Any) -> tuple[int, float]:
        value = run.data.metrics.get(objective)
        return (value is None, -value if (value is not None and descending) else (value or 0.0))

    columns = [objective, "val/sensitivity", "val/specificity", "val/threshold", "val/loss"]
    lines = ["| run | status | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for run in sorted(runs, key=key):
        values = [run.data.metrics.get(c) for c in columns]
        cells = " | ".join("" if v is None else f"{v:.4f}" for v in values)
        lines.append(f"| {run.info.run_name} | {run.info.status} | {cells} |")
    return "\n".join(lines)
