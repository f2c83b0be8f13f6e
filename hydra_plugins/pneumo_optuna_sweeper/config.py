"""The sweeper's settings, registered as `hydra/sweeper=pneumo_optuna` (defaults; the search configs in
conf/hparams_search/ set the study name and the search space). No `from __future__ import annotations`:
Hydra executes plugin modules outside sys.modules, where dataclasses cannot read string annotations."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class PneumoOptunaSweeperConf:
    """Every key is `hydra.sweeper.<key>` on the command line; see pneumo.search.driver.SearchSettings."""

    _target_: str = "hydra_plugins.pneumo_optuna_sweeper.sweeper.PneumoOptunaSweeper"
    _recursive_: bool = False          # the sampler is built per trial, seeded with seed + trial number
    study_name: str = "pneumo"
    storage: str = "auto"              # auto (sqlite beside the MLflow store) | sqlite:///... | postgresql://... | journal:PATH
    direction: str = "maximize"
    n_trials: int = 20                 # finished trials (complete + pruned) the study runs to
    n_jobs: Optional[int] = None       # trials launched at once; null: hydra.launcher.n_jobs, else 1
    params: Dict[str, Any] = field(default_factory=dict)
    sampler: Dict[str, Any] = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    pruner: str = "median"             # median | hyperband | none
    pruners: Dict[str, Any] = field(default_factory=lambda: {
        "median": {"n_startup_trials": 2, "n_warmup_steps": 0},
        "hyperband": {"min_resource": 1, "max_resource": "auto", "reduction_factor": 3},
        "none": {}})
    heartbeat_interval: int = 10       # seconds between a live trial's heartbeats
    grace_period: int = 30             # seconds without one after which a RUNNING trial is failed and retried
    max_failures_in_a_row: int = 3


ConfigStore.instance().store(group="hydra/sweeper", name="pneumo_optuna", node=PneumoOptunaSweeperConf,
                             provider="pneumo")
