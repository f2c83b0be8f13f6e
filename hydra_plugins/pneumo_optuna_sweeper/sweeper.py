"""The Hydra sweeper: reads `hydra.sweeper`, runs `pneumo.search.driver.Search` with Hydra's launcher."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, List, Sequence

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class PneumoOptunaSweeper(Sweeper):
    """`hydra/sweeper=pneumo_optuna`: a persistent, resumable Optuna study shared by any number of workers."""

    def __init__(self, **settings: Any) -> None:
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the Hydra context and config, and instantiate `hydra/launcher` (Hydra's errors propagate)."""
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        """Run the study for the command line's `arguments` (sweep overrides); returns the optuna Study.
        Raises ValueError for unusable `hydra.sweeper` settings, RuntimeError after too many failed trials;
        any error after the MLflow parent run is opened closes it FAILED (KILLED for Ctrl-C) first."""
        from pneumo.search.driver import Search, SearchSettings, Tracking
        from pneumo.search.storage import shown
        from pneumo.training.sweep import SWEEP_KEYS_ENV

        assert self.config is not None
        raw = OmegaConf.to_container(self.config.hydra.sweeper, resolve=True)  # ${seed} from the task config
        launcher_jobs = OmegaConf.select(self.config, "hydra.launcher.n_jobs", default=None)
        if launcher_jobs is not None and int(launcher_jobs) < 1:  # joblib's -1: one per core
            launcher_jobs = os.cpu_count() or 1
        settings = SearchSettings(
            study_name=str(raw["study_name"]), storage=raw["storage"], direction=raw["direction"],
            n_trials=int(raw["n_trials"]), n_jobs=int(raw["n_jobs"] or launcher_jobs or 1), params=raw["params"],
            sampler=raw["sampler"], pruner=raw["pruner"], pruners=raw["pruners"],
            heartbeat_interval_s=int(raw["heartbeat_interval"]), grace_period_s=int(raw["grace_period"]),
            max_failures_in_a_row=int(raw["max_failures_in_a_row"]))
        logger = self.config.get("logger")
        tracking = Tracking(logger.tracking_uri, logger.experiment_name, logger.get("artifact_location")) \
            if logger else None
        search = Search(settings, str(self.config.get("objective", "val/auroc")), tracking)
        keys = search.prepare(arguments)
        try:  # from here on the parent run is open: whatever fails closes it (run does so itself too)
            os.environ[SWEEP_KEYS_ENV] = ",".join(["optuna.trial_number", *keys])  # run names: what differs
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
            study = search.run(self._launch)
        except BaseException as error:
            search.abort(error)
            raise
        try:
            best = {"best_params": study.best_params, "best_value": study.best_value}
        except ValueError:  # no complete trial
            best = {}
        OmegaConf.save(OmegaConf.create({"name": "optuna", "study_name": settings.study_name,
                                         "storage": shown(search.url), **best}),
                       sweep_dir / "optimization_results.yaml")
        return study

    def _launch(self, jobs: list[list[str]], first_job_number: int) -> Sequence[Any]:
        """Run one batch with Hydra's launcher; each job's end as a pneumo.search Outcome."""
        from hydra.core.utils import JobStatus

        from pneumo.search.context import was_pruned
        from pneumo.search.driver import Outcome

        self.validate_batch_is_legal(jobs)  # a job config that does not compose fails here, before any run
        outcomes = []
        for job in self.launcher.launch(jobs, initial_job_idx=first_job_number):
            if job.status == JobStatus.COMPLETED:
                value = job.return_value
                outcomes.append(Outcome("ok", float(value) if isinstance(value, (int, float)) else None))
            elif was_pruned(job._return_value):
                outcomes.append(Outcome("pruned"))
            else:
                error = job._return_value
                log.error("job %s failed", " ".join(job.overrides or []), exc_info=error)
                outcomes.append(Outcome("failed", error=error))
        return outcomes
