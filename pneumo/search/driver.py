"""The search loop: open (or continue) the study, run the trials still missing, record how it went.

One `Search` runs in each worker process (the sweeper of `python train.py hparams_search=optuna`); any
number of workers, on one machine or several, may run the same study at once. Each round a worker
- fails the trials whose worker stopped beating (`pneumo.search.liveness`) and queues them again with
  the same values,
- counts the finished trials (COMPLETE + PRUNED) and the live RUNNING ones, and asks for as many new
  trials as are still missing to reach `n_trials` (at most `n_jobs` at a time),
- hands them to the launcher (Hydra's: in process, joblib, SLURM) and tells the study how each ended.
When every trial is finished (or running in a live worker, which it waits for) it prints the summary and
fills the MLflow parent run. Hydra-free: the plugin passes in `launch`.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pneumo.search.context import SearchContext
from pneumo.search.liveness import Heartbeat, fail_stale
from pneumo.search.parent_run import StudyRun, best_trial
from pneumo.search.pruners import build_pruner
from pneumo.search.space import search_space, trial_overrides
from pneumo.search.storage import creation_lock, open_storage, resolve_storage, shown
from pneumo.search.summary import FINISHED_STATES, headline, summary_markdown

log = logging.getLogger(__name__)


@dataclass
class SearchSettings:
    """`hydra.sweeper.*`: the study, its size and the pruner (see conf/hparams_search/optuna.yaml).

    heartbeat_interval_s and grace_period_s are whole seconds (Optuna's RDB heartbeat takes integers);
    max_failures_in_a_row: that many failed trials one after another end the search with the last error."""

    study_name: str
    storage: str = "auto"
    direction: str = "maximize"
    n_trials: int = 20
    n_jobs: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler"})
    pruner: str = "median"
    pruners: dict[str, dict[str, Any]] = field(default_factory=dict)
    heartbeat_interval_s: int = 10
    grace_period_s: int = 30
    max_failures_in_a_row: int = 3


@dataclass
class Tracking:
    """Where the trials' MLflow runs go (`logger.*` of the training config) and what they optimise."""

    tracking_uri: str
    experiment_name: str
    artifact_location: str | None = None


@dataclass
class Outcome:
    """How one trial's job ended: status 'ok' (value: the objective), 'pruned' or 'failed' (error)."""

    status: str
    value: float | None = None
    error: BaseException | None = None


Launch = Callable[[list[list[str]], int], Sequence[Outcome]]


class Search:
    """One worker of study `settings.study_name`. `prepare(arguments)` opens the study and the MLflow
    parent run and publishes the context the jobs report through; `run(launch)` runs the missing trials,
    where `launch(overrides per job, first job number)` runs the jobs and returns their outcomes.
    Whatever raises after the parent run is opened (in `prepare`, `run`, `finish`, or the caller's code
    between them, which calls `abort`) closes it FAILED (KILLED for Ctrl-C), so it never stays RUNNING.

    Raises ValueError for settings that cannot work (naming the hydra.sweeper key), and RuntimeError when
    `max_failures_in_a_row` trials fail one after another (chained to the last job's error)."""

    def __init__(self, settings: SearchSettings, objective: str, tracking: Tracking | None) -> None:
        if settings.direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction={settings.direction}: choose maximize or minimize")
        if settings.n_trials < 1 or settings.n_jobs < 1:
            raise ValueError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs take integers >= 1")
        self.settings, self.objective, self.tracking = settings, objective, tracking
        self.pruner = build_pruner(settings.pruner, settings.pruners.get(settings.pruner))
        self.url = resolve_storage(settings.storage, tracking.tracking_uri if tracking else None)
        self.stale: list[Any] = []
        self.parent: StudyRun | None = None
        self.study = None

    def prepare(self, arguments: Sequence[str]) -> list[str]:
        """Open the study and parent run; returns the searched keys.

        Raises ValueError when the stored study was created for the other direction (checked before the
        parent run is touched) or the search space is not one."""
        import optuna

        self.space, self.fixed = search_space(self.settings.params, arguments)
        with creation_lock(self.url):
            self.storage = open_storage(self.url, self.settings.heartbeat_interval_s, self.settings.grace_period_s,
                                        stale_callback=lambda study, trial: self.stale.append(trial))
            self.study = optuna.create_study(study_name=self.settings.study_name, storage=self.storage,
                                             direction=self.settings.direction, pruner=self.pruner,
                                             load_if_exists=True)
            if self.study.direction.name.lower() != self.settings.direction:
                raise ValueError(f"study {self.settings.study_name} in {shown(self.url)} was created to "
                                 f"{self.study.direction.name.lower()}; set hydra.sweeper.study_name to a new name")
            if self.tracking is not None:
                self.parent = StudyRun(self.tracking.tracking_uri, self.tracking.experiment_name,
                                       self.settings.study_name, shown(self.url), self.objective,
                                       self.settings.direction, self.tracking.artifact_location)
        try:
            return self._publish()
        except BaseException as error:
            self.abort(error)
            raise

    def _publish(self) -> list[str]:
        SearchContext(self.url, self.settings.study_name, self.settings.pruner,
                      dict(self.settings.pruners.get(self.settings.pruner) or {}), self.objective,
                      self.parent.run_id if self.parent else None).publish()
        trials = self.study.get_trials(deepcopy=False)
        log.info("study %s in %s: %d trials so far, %d finished; running until %d are finished",
                 self.settings.study_name, shown(self.url), len(trials),
                 sum(t.state.name in FINISHED_STATES for t in trials), self.settings.n_trials)
        return list(self.space)

    def run(self, launch: Launch) -> Any:
        """Run trials until `n_trials` are finished, then `finish`; returns the study.

        On any exception (Ctrl-C, a launcher error, too many failures) the trials still RUNNING in this
        worker are marked FAIL and queued again with the same values (user attribute `retry_of`), so the
        next run retries them; the parent run is closed (`abort`) and the exception re-raised."""
        try:
            heartbeat = Heartbeat(self.storage, self.settings.heartbeat_interval_s,
                                  on_error=lambda error: log.warning("heartbeat failed (retrying): %s", error))
            try:
                self._loop(launch, heartbeat)
            finally:
                heartbeat.stop()
            self.finish()
        except BaseException as error:
            self.abort(error)
            raise
        return self.study

    def abort(self, error: BaseException) -> None:
        """Close the MLflow parent run because `error` stopped the search: KILLED for KeyboardInterrupt or
        SystemExit, FAILED otherwise; a no-op without MLflow or once the run has ended. A failure to reach
        MLflow here is logged, not raised, so it never hides `error`."""
        if self.parent is None:
            return
        try:
            self.parent.close("KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED")
        except Exception as problem:  # noqa: BLE001 - never hide the error that stopped the search
            log.warning("could not close the MLflow parent run %s: %s", self.parent.run_id, problem)

    def _loop(self, launch: Launch, heartbeat: Heartbeat) -> None:
        self.failures, in_flight = 0, []
        try:
            while True:
                self._fail_stale()
                missing, running = self._missing()
                if missing <= 0:
                    if running == 0:
                        return
                    time.sleep(self.settings.heartbeat_interval_s)  # another worker's trials: wait for them
                    continue
                for _ in range(min(missing, self.settings.n_jobs)):
                    in_flight.append(self._ask(heartbeat))  # one by one: a Ctrl-C meanwhile finds them all
                in_flight = self._drop_surplus(in_flight, heartbeat)
                for group in _consecutive(in_flight):
                    jobs = [trial_overrides(trial.params, self.fixed, trial.number) for trial in group]
                    for trial, outcome in zip(group, launch(jobs, group[0].number)):
                        self._settle(trial, outcome, heartbeat)
                in_flight = []
        except BaseException:
            self._retry_later(in_flight, heartbeat)
            raise

    def _retry_later(self, trials: list[Any], heartbeat: Heartbeat) -> None:
        """Ctrl-C or an error while `trials` were in flight: each one still RUNNING is failed and queued
        again with its values, as a dead worker's trial is (`_fail_stale`). Errors are logged, not raised."""
        from optuna.trial import TrialState

        for trial in trials:
            try:
                if self.storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
                    continue  # settled before the interruption
                frozen = self._tell(trial.number, Outcome("failed"), heartbeat)
                log.warning("trial %d was interrupted: marked FAIL, queued again with the same values", trial.number)
                if self.parent:
                    self.parent.mark_trial(frozen, "FAIL")
                if frozen.params:
                    self.study.enqueue_trial(frozen.params, user_attrs={"retry_of": trial.number})
            except Exception as problem:  # noqa: BLE001 - never hide the error that stopped the search
                log.warning("could not queue interrupted trial %d again: %s", trial.number, problem)

    def finish(self) -> None:
        """Print the headline and the table; fill the MLflow parent run."""
        trials = self.study.get_trials(deepcopy=False)
        runs = {}
        if self.parent:
            for run in sorted(self.parent.children(), key=lambda run: run.info.start_time):
                if run.data.tags.get("optuna.state") in FINISHED_STATES or run.info.status == "FINISHED":
                    runs[int(run.data.tags.get("optuna.trial_number", -1))] = run.info.run_name
        best = best_trial(self.study)
        table = summary_markdown(trials, self.objective, self.settings.direction == "maximize", runs)
        title = headline(self.settings.study_name, shown(self.url), trials, self.objective, best)
        print(f"\n{title}\n{table}")
        if self.parent:
            from pneumo.tracking.logger import ui_hint

            self.parent.finish(self.study, f"# {title}\n\n{table}")
            print(f"MLflow parent run {self.parent.run_id}; its trials: tags.`mlflow.parentRunId` = "
                  f"'{self.parent.run_id}'\n{ui_hint(self.tracking.tracking_uri, self.parent.experiment_id)}")

    def _missing(self) -> tuple[int, int]:
        """(trials still to start, trials running) to reach n_trials finished ones."""
        trials = self.study.get_trials(deepcopy=False)
        finished = sum(trial.state.name in FINISHED_STATES for trial in trials)
        running = sum(trial.state.name == "RUNNING" for trial in trials)
        return self.settings.n_trials - finished - running, running

    def _fail_stale(self) -> None:
        for trial in fail_stale(self.study, self.storage, self.settings.grace_period_s, self.stale):
            log.warning("trial %d was left RUNNING by a worker that stopped (no heartbeat for %d s): marked FAIL, "
                        "queued again with the same values", trial.number, self.settings.grace_period_s)
            if self.parent:
                self.parent.mark_trial(trial, "FAIL")
            if trial.params:
                self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})

    def _ask(self, heartbeat: Heartbeat):
        """A new trial (or a queued retry), beating at once, its values drawn by a sampler seeded with the
        search seed plus the trial number: reproducible, and two workers never draw the same values.

        The sampler is installed before `study.ask()` (seeded with the number the new trial will get: the
        number of trials so far), so its `before_trial` and the relative draw (TPE multivariate, CMA-ES, GP:
        Optuna draws it at the first suggest) both use it. When another worker asked in between, the trial
        got a later number: the sampler is then seeded again with that number before anything is drawn."""
        expected = len(self.study.get_trials(deepcopy=False))
        self.study.sampler = self._sampler(expected)
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize": ours beats
            warnings.simplefilter("ignore")
            trial = self.study.ask()
        heartbeat.add(trial._trial_id)
        if trial.number != expected and self.settings.sampler.get("seed") is not None:
            self.study.sampler = self._sampler(trial.number)
            self.study.sampler.before_trial(self.study, self.storage.get_trial(trial._trial_id))
        for name, dist in self.space.items():
            _suggest(trial, name, dist)
        return trial

    def _sampler(self, number: int) -> Any:
        """`hydra.sweeper.sampler` instantiated, its seed (when set) plus `number`."""
        from hydra.utils import instantiate

        options = dict(self.settings.sampler)
        if options.get("seed") is not None:
            options["seed"] = int(options["seed"]) + number
        return instantiate(options)

    def _drop_surplus(self, asked: list[Any], heartbeat: Heartbeat) -> list[Any]:
        """Two workers that counted at the same moment may together ask for more than n_trials: only the
        lowest-numbered running trials are kept, the others are failed before they run (user attribute
        `surplus`), the same decision in every worker."""
        trials = self.study.get_trials(deepcopy=False)
        finished = sum(trial.state.name in FINISHED_STATES for trial in trials)
        running = sorted(trial.number for trial in trials if trial.state.name == "RUNNING")
        keep = set(running[:max(self.settings.n_trials - finished, 0)])
        kept = []
        for trial in asked:
            if trial.number in keep:
                kept.append(trial)
            else:
                trial.set_user_attr("surplus", True)
                self._tell(trial.number, Outcome("failed"), heartbeat)
        return kept

    def _settle(self, trial: Any, outcome: Outcome, heartbeat: Heartbeat) -> None:
        frozen = self._tell(trial.number, outcome, heartbeat)
        state = frozen.state.name
        if self.parent:
            self.parent.mark_trial(frozen, state)
        if state == "FAIL":
            self.failures += 1
            log.warning("trial %d failed: %s", trial.number, outcome.error or "no objective (nan)")
            if self.failures >= self.settings.max_failures_in_a_row:
                raise RuntimeError(f"{self.failures} trials in a row failed; the last (trial {trial.number}) "
                                   f"with {outcome.error!r}. Fix the cause, then run the same command to "
                                   f"continue the study") from outcome.error
        else:
            self.failures = 0

    def _tell(self, number: int, outcome: Outcome, heartbeat: Heartbeat) -> Any:
        """Tell the study how trial `number` ended; returns the FrozenTrial as it ended."""
        from optuna.trial import TrialState

        if outcome.status == "pruned":
            state, values = TrialState.PRUNED, None
        elif outcome.status == "ok" and outcome.value is not None and not math.isnan(outcome.value):
            state, values = TrialState.COMPLETE, float(outcome.value)
        else:
            state, values = TrialState.FAIL, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = self.study.tell(number, values, state=state, skip_if_finished=True)
        heartbeat.discard(frozen._trial_id)
        return frozen


def _suggest(trial: Any, name: str, dist: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)


def _consecutive(trials: list[Any]) -> list[list[Any]]:
    """Trials split into runs of consecutive numbers: a launch numbers its jobs from the first one on,
    so each job's number (and output folder) is its trial's number."""
    groups: list[list[Any]] = []
    for trial in sorted(trials, key=lambda trial: trial.number):
        if groups and trial.number == groups[-1][-1].number + 1:
            groups[-1].append(trial)
        else:
            groups.append([trial])
    return groups
