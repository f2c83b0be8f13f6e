"""Where a study lives: a sqlite file beside the MLflow store by default, any database for a team.

`hydra.sweeper.storage` takes:
- `auto` (default): `optuna.db` in the folder of a `sqlite:///.../mlflow.db` tracking store (so a test's
  private store keeps its study too), else `mlruns/optuna.db` under the project;
- an SQLAlchemy URL: `sqlite:///PATH`, `postgresql://USER:PASSWORD@HOST/DB` (a team, several machines),
  `mysql://...`;
- `journal:PATH`: Optuna's journal file, for machines that share a file system but no database server.

Imports Optuna; standard library otherwise.
"""
from __future__ import annotations

import fcntl
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pneumo.paths import PROJECT_ROOT

DB_SCHEMES = ("sqlite:", "postgresql", "mysql", "mariadb", "oracle", "mssql")
JOURNAL = "journal:"
SQLITE_TIMEOUT_S = 60  # how long a sqlite writer waits for another's lock before "database is locked"


def resolve_storage(storage: str | None, tracking_uri: str | None) -> str:
    """The storage URL for `hydra.sweeper.storage` (see the module docstring).

    Raises ValueError naming the key and the accepted forms for anything else (null included: an
    in-memory study would be lost with the process, which is what this search exists to avoid).
    """
    text = str(storage).strip() if storage is not None else ""
    if text == "auto":
        if tracking_uri and tracking_uri.startswith("sqlite:///"):
            folder = Path(tracking_uri.removeprefix("sqlite:///")).expanduser().parent
        else:
            folder = PROJECT_ROOT / "mlruns"
        return f"sqlite:///{folder / 'optuna.db'}"
    if text.startswith(DB_SCHEMES) or text.startswith(JOURNAL):
        return text
    raise ValueError(f"hydra.sweeper.storage={storage!r} is not a storage: use auto (a sqlite file beside the "
                     f"MLflow store), sqlite:///PATH, postgresql://USER:PASSWORD@HOST/DB, or journal:PATH")


def shown(url: str) -> str:
    """The URL with its password masked, for logs and MLflow tags."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


def journal_path(url: str) -> Path:
    """The file of a `journal:PATH` (also `journal:///abs/path`)."""
    rest = url.removeprefix(JOURNAL)
    return Path(rest[2:] if rest.startswith("///") else rest).expanduser()


@contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """Held while a process opens a sqlite or journal storage and creates or loads the study: two workers
    starting at once would otherwise both create the tables ("table already exists"). A no-op for a
    database server, whose transactions settle it."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///")).expanduser()
    elif url.startswith(JOURNAL):
        path = journal_path(url)
    else:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def open_storage(url: str, heartbeat_interval_s: int | None = None, grace_period_s: int | None = None,
                 stale_callback=None):
    """An Optuna storage for `url` (a resolved one).

    On a database the trials in flight beat a heartbeat every `heartbeat_interval_s` seconds (Optuna's
    RDB heartbeat, timed by the database's clock), and a RUNNING trial silent for `grace_period_s` is
    failed by `optuna.storages.fail_stale_trials`, which then calls `stale_callback(study, trial)`. The
    journal file has no heartbeat of Optuna's: `pneumo.search.liveness` keeps one in the trials' system
    attributes instead. A sqlite file's folder is created, and its writers wait up to a minute for a lock.
    """
    import optuna

    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    with warnings.catch_warnings():  # the heartbeat is marked experimental since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval_s,
                                          grace_period=grace_period_s, heartbeat_stale_trial_callback=stale_callback)
