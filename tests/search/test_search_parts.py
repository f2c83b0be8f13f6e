"""The parts of the Optuna search, each on real storage: search space, where the study lives, pruners,
heartbeats that tell a dead worker's trial from a live one, resume in the driver, the command-line check."""
from __future__ import annotations

import time
from typing import ClassVar

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from pneumo.command_line import command_line_problem
from pneumo.config import PROJECT_ROOT
from pneumo.search.driver import Outcome, Search, SearchSettings
from pneumo.search.liveness import Heartbeat, beat, fail_stale
from pneumo.search.pruners import build_pruner
from pneumo.search.space import search_space, trial_overrides
from pneumo.search.storage import open_storage, resolve_storage, shown
from pneumo.search.summary import summary_markdown


def test_search_space_reads_hydra_sweeps_and_command_line_dimensions():
    space, fixed = search_space(
        {"optim.lr": "tag(log, interval(0.00001, 0.01))", "model.freeze_epochs": "range(0, 3)",
         "augment.mixup_alpha": "interval(0.0, 0.4)"},
        ["data=synthetic", "model=choice(baseline, efficientnet_lite0)", "augment.mixup_alpha=0.2"])
    assert space == {"optim.lr": FloatDistribution(1e-5, 1e-2, log=True),
                     "model.freeze_epochs": IntDistribution(0, 2),
                     "model": CategoricalDistribution(("baseline", "efficientnet_lite0"))}
    assert fixed == ["data=synthetic", "augment.mixup_alpha=0.2"]  # a fixed value replaces the dimension
    assert trial_overrides({"optim.lr": 0.000123456789, "model": "efficientnet_lite0"}, fixed, 7) == [
        "+optuna.trial_number=7", "optim.lr=0.000123456789", "model=efficientnet_lite0", *fixed]
    with pytest.raises(ValueError, match="model=glob"):
        search_space({}, ["model=glob(*)"])


def test_the_study_lives_beside_the_mlflow_store_unless_told(tmp_path):
    assert resolve_storage("auto", f"sqlite:///{tmp_path}/mlruns/mlflow.db") == f"sqlite:///{tmp_path}/mlruns/optuna.db"
    assert resolve_storage("auto", "http://mlflow:5000") == f"sqlite:///{PROJECT_ROOT}/mlruns/optuna.db"
    team = "postgresql://pneumo:s3cret@db.example/optuna"
    assert resolve_storage(team, "http://mlflow:5000") == team
    assert shown(team) == "postgresql://pneumo:***@db.example/optuna"
    with pytest.raises(ValueError, match="hydra.sweeper.storage=None.*postgresql://"):
        resolve_storage(None, None)


def test_pruners_by_name_and_clear_errors():
    assert isinstance(build_pruner("median", {"n_startup_trials": 1}), optuna.pruners.MedianPruner)
    assert isinstance(build_pruner("hyperband", {"max_resource": "auto"}), optuna.pruners.HyperbandPruner)
    assert isinstance(build_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="hydra.sweeper.pruner=asha.*median, hyperband, none"):
        build_pruner("asha")
    with pytest.raises(ValueError, match="hydra.sweeper.pruners.median"):
        build_pruner("median", {"min_resource": 1})


def test_the_command_line_check_knows_the_sweeper_keys():
    assert command_line_problem("train", ["hparams_search=optuna", "hydra.sweeper.n_trials=3",
                                          "hydra.sweeper.pruner=median"]) is None
    assert command_line_problem("train", ["hparams_search=optuna_finetune", "hydra.sweeper.pruner=none"]) is None
    wrong = command_line_problem("train", ["hparams_search=optuna", "hydra.sweeper.pruner=medain"])
    assert wrong == ("hydra.sweeper.pruner=medain is not allowed: hydra.sweeper.pruner takes one of median, "
                     "hyperband, none. Fix: hydra.sweeper.pruner=median")


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_silent_trial_is_failed_and_a_beating_one_is_left_alone(tmp_path, kind):
    url = f"sqlite:///{tmp_path}/optuna.db" if kind == "sqlite" else f"journal:{tmp_path}/optuna.log"
    stale_a, stale_b = [], []
    worker_a = open_storage(url, 1, 2, stale_callback=lambda study, trial: stale_a.append(trial))
    worker_b = open_storage(url, 1, 2, stale_callback=lambda study, trial: stale_b.append(trial))
    study_a = optuna.create_study(study_name="s", storage=worker_a, load_if_exists=True)
    study_b = optuna.load_study(study_name="s", storage=worker_b)
    live, dead = study_a.ask(), study_a.ask()
    beat(worker_a, dead._trial_id)                       # one beat, then its worker "dies"
    heartbeat = Heartbeat(worker_a, 1)
    heartbeat.add(live._trial_id)
    try:
        time.sleep(3.5)
        failed = fail_stale(study_b, worker_b, 2, stale_b)   # the other worker looks
        again = fail_stale(study_a, worker_a, 2, stale_a)    # a third look finds nothing more to fail
    finally:
        heartbeat.stop()
    assert [trial.number for trial in failed] == [dead.number] and again == []
    states = {trial.number: trial.state for trial in study_b.get_trials()}
    assert states == {live.number: TrialState.RUNNING, dead.number: TrialState.FAIL}


def test_a_resumed_search_retries_the_dead_trial_and_stops_at_n_trials(tmp_path):
    """The driver with a quadratic objective standing in for training: a trial left RUNNING by a killed
    worker is failed, run again with its values, and the study ends with exactly n_trials finished."""
    url = f"sqlite:///{tmp_path}/optuna.db"
    settings = SearchSettings(study_name="resume", storage=url, n_trials=4, pruner="none",
                              params={"x": "interval(-2, 2)"},
                              sampler={"_target_": "optuna.samplers.TPESampler", "seed": 1},
                              heartbeat_interval_s=1, grace_period_s=1)
    first = Search(settings, "val/auroc", None)
    first.prepare([])
    killed = first.study.ask()
    killed.suggest_float("x", -2, 2)
    beat(first.storage, killed._trial_id)               # its process is SIGKILLed here
    time.sleep(2.5)
    jobs: list[tuple[int, list[str]]] = []

    def launch(overrides: list[list[str]], first_number: int) -> list[Outcome]:
        jobs.extend((first_number + i, job) for i, job in enumerate(overrides))
        return [Outcome("ok", -float(job[1].split("=")[1]) ** 2) for job in overrides]

    study = Search(settings, "val/auroc", None)
    study.prepare([])
    study.run(launch)
    trials = study.study.get_trials()
    assert [t.state.name for t in trials].count("COMPLETE") == 4 and trials[killed.number].state.name == "FAIL"
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert retry.params == killed.params and retry.state.name == "COMPLETE"
    assert [number for number, _ in jobs] == [t.number for t in trials if t.state.name == "COMPLETE"]
    assert all(job[0] == f"+optuna.trial_number={number}" for number, job in jobs)


def test_the_summary_puts_the_best_complete_trial_first():
    study = optuna.create_study(direction="maximize")
    for value in (0.6, 0.9):
        trial = study.ask()
        trial.suggest_float("optim.lr", 1e-5, 1e-2, log=True)
        trial.report(value, 0)
        study.tell(trial, value)
    pruned = study.ask()
    pruned.report(0.95, 0)
    study.tell(pruned, state=TrialState.PRUNED)
    rows = [line.split("|")[1:4] for line in summary_markdown(study.trials, "val/auroc").splitlines()[2:]]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["1", "COMPLETE", "0.9000"], ["0", "COMPLETE", "0.6000"], ["2", "PRUNED", "0.9500"]]


def _settings(tmp_path, **changes) -> SearchSettings:
    options = {"study_name": "s", "storage": f"sqlite:///{tmp_path}/optuna.db", "n_trials": 2, "pruner": "none",
               "params": {"x": "interval(-2, 2)"}, "heartbeat_interval_s": 1, "grace_period_s": 30}
    return SearchSettings(**(options | changes))


def _ok(overrides: list[list[str]], first_number: int) -> list[Outcome]:
    return [Outcome("ok", -float(job[1].split("=")[1]) ** 2) for job in overrides]


def test_ctrl_c_fails_the_trial_in_flight_and_the_next_run_retries_its_values(tmp_path):
    def interrupted(overrides, first_number):
        raise KeyboardInterrupt

    first = Search(_settings(tmp_path), "val/auroc", None)
    first.prepare([])
    with pytest.raises(KeyboardInterrupt):
        first.run(interrupted)
    [cut] = first.study.get_trials()[:1]
    assert cut.state == TrialState.FAIL
    [queued] = [t for t in first.study.get_trials() if t.user_attrs.get("retry_of") == cut.number]
    assert queued.state == TrialState.WAITING

    second = Search(_settings(tmp_path), "val/auroc", None)
    second.prepare([])
    second.run(_ok)
    retry = second.study.get_trials()[queued.number]
    assert retry.state == TrialState.COMPLETE and retry.params == cut.params
    assert [t.state.name for t in second.study.get_trials()].count("COMPLETE") == 2


class RecordingSampler(optuna.samplers.RandomSampler):
    """A RandomSampler that notes which seed served each trial's before_trial and relative draw."""

    seen: ClassVar[list[tuple[str, int, int]]] = []

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self.seed = seed

    def before_trial(self, study, trial) -> None:
        RecordingSampler.seen.append(("before_trial", trial.number, self.seed))

    def sample_relative(self, study, trial, search_space):
        RecordingSampler.seen.append(("sample_relative", trial.number, self.seed))
        return {}


def test_the_seeded_sampler_is_in_place_before_ask_and_the_relative_draw(tmp_path):
    RecordingSampler.seen = []
    sampler = {"_target_": f"{__name__}.RecordingSampler", "seed": 100}
    search = Search(_settings(tmp_path, n_trials=3, sampler=sampler), "val/auroc", None)
    search.prepare([])
    search.run(_ok)
    assert RecordingSampler.seen == [(hook, number, 100 + number) for number in range(3)
                                     for hook in ("before_trial", "sample_relative")]


def test_the_trials_of_one_process_share_one_storage(tmp_path):
    from pneumo.search.context import SearchContext, TrialLink

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=url)
    first, second = study.ask(), study.ask()
    context = SearchContext(url, "s", "none")
    links = [TrialLink(context, first.number), TrialLink(context, second.number)]
    assert links[0].storage is links[1].storage          # one engine for the process, not one per trial
    links[1].record_run("abc")
    assert study.get_trials()[second.number].user_attrs == {"mlflow_run_id": "abc"}


def test_the_parent_run_is_never_left_running(tmp_path, monkeypatch):
    """finish failing closes the parent FAILED; a study of the other direction is refused before the parent
    run is reopened, so it stays as it was."""
    from mlflow import MlflowClient

    from pneumo.search.driver import Tracking
    from pneumo.search.parent_run import StudyRun

    tracking = Tracking(f"sqlite:///{tmp_path}/mlflow.db", "pneumo")
    search = Search(_settings(tmp_path, n_trials=1), "val/auroc", tracking)
    search.prepare([])

    def broken_finish(self, study, summary_markdown):
        raise RuntimeError("artifact store unreachable")

    monkeypatch.setattr(StudyRun, "finish", broken_finish)
    with pytest.raises(RuntimeError, match="artifact store"):
        search.run(_ok)
    client = MlflowClient(tracking.tracking_uri)
    assert client.get_run(search.parent.run_id).info.status == "FAILED"

    flipped = Search(_settings(tmp_path, n_trials=1, direction="minimize"), "val/auroc", tracking)
    with pytest.raises(ValueError, match="was created to maximize"):
        flipped.prepare([])
    assert flipped.parent is None
    assert client.get_run(search.parent.run_id).info.status == "FAILED"
