"""Telling a dead worker's trial from a live one.

Every process that runs trials beats a heartbeat for each trial it has in flight (`Heartbeat`, a daemon
thread, every `interval_s` seconds). A RUNNING trial whose last beat is older than the grace period was
left by a process that died (SIGKILL, a lost machine): `fail_stale` marks it FAIL, so a resumed or a
second worker retries it, while trials whose workers still beat are left alone, whichever worker looks.

On a database, Optuna's own RDB heartbeat is used (its table, timed by the database's clock, so machines
with skewed clocks agree). Optuna's journal file has none: there the beat is the trial's system
attribute `pneumo.heartbeat` (Unix seconds of the beating machine: keep its clocks in sync, well within
the grace period).
"""
from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable

HEARTBEAT_ATTR = "pneumo.heartbeat"


def _uses_optuna_heartbeat(storage) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def beat(storage, trial_id: int) -> None:
    """One heartbeat for the trial with storage id `trial_id`."""
    if _uses_optuna_heartbeat(storage):
        storage.record_heartbeat(trial_id)
    else:
        storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())


class Heartbeat:
    """A daemon thread beating, every `interval_s` seconds, for the trials this process has in flight.

    `add(trial_id)` beats at once (so no trial is ever RUNNING without a beat for long) and keeps beating
    until `discard(trial_id)`; `stop()` ends the thread. A failed beat (the database briefly away) is
    reported once through `on_error` and retried at the next interval."""

    def __init__(self, storage, interval_s: float, on_error: Callable[[Exception], None] | None = None) -> None:
        self.storage, self.interval_s, self.on_error = storage, interval_s, on_error
        self.trial_ids: set[int] = set()
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)
        self._thread.start()

    def add(self, trial_id: int) -> None:
        """Beat once now for storage trial id `trial_id` (int), then at every interval until `discard`.
        Raises what the storage raises when this first beat fails (e.g. sqlalchemy's OperationalError)."""
        beat(self.storage, trial_id)
        with self._lock:
            self.trial_ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        """Stop beating for `trial_id` (int); a trial not beating is ignored. Raises nothing."""
        with self._lock:
            self.trial_ids.discard(trial_id)

    def stop(self) -> None:
        """End the thread, waiting at most `interval_s` + 5 seconds for it. Raises nothing."""
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def _run(self) -> None:
        reported = False
        while not self._stop.wait(self.interval_s):
            with self._lock:
                ids = sorted(self.trial_ids)
            for trial_id in ids:
                try:
                    beat(self.storage, trial_id)
                except Exception as error:  # a busy or briefly unreachable database: try again next time
                    if self.on_error and not reported:
                        self.on_error(error)
                    reported = True


def fail_stale(study, storage, grace_period_s: float, stale_from_callback: list) -> list:
    """Mark FAIL every RUNNING trial of `study` whose heartbeat is older than `grace_period_s` seconds
    and return them (FrozenTrials, as they were). A trial another worker failed first is not returned,
    so each stale trial is handled by exactly one worker.

    On a database Optuna does the check (`optuna.storages.fail_stale_trials`, its grace period set on the
    storage); its callback appends each trial it failed to `stale_from_callback`, which is drained here."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    if _uses_optuna_heartbeat(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        failed = list(stale_from_callback)
        stale_from_callback.clear()
        return failed
    failed, now = [], time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = trial.system_attrs.get(HEARTBEAT_ATTR)
        if last is None:
            last = trial.datetime_start.timestamp() if trial.datetime_start else now
        if now - float(last) <= grace_period_s:
            continue
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial)
        except UpdateFinishedTrialError:  # another worker failed it (or it just finished)
            pass
    return failed
