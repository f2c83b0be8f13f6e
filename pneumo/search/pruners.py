"""Which trials stop early: `hydra.sweeper.pruner=median|hyperband|none`, with each pruner's options in
`hydra.sweeper.pruners.<name>` (Optuna's keyword arguments).

A trial reports the objective after every validation epoch (step = epoch); `median` stops it when it is
worse than the median of earlier trials at the same epoch, `hyperband` runs successive halving brackets
over epochs, `none` lets every trial run to its last epoch.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRUNERS = ("median", "hyperband", "none")


def pruner_problem(name: Any) -> str | None:
    """The message for a pruner name that is not one of PRUNERS, or None."""
    if name in PRUNERS:
        return None
    return f"hydra.sweeper.pruner={name} is not a pruner: choose one of {', '.join(PRUNERS)}. Fix: hydra.sweeper.pruner=median"


def build_pruner(name: str, options: Mapping[str, Any] | None = None):
    """The Optuna pruner for `name` with `options` as its keyword arguments.

    Raises ValueError for an unknown name (naming the choices) and for options the pruner does not take
    (naming the key to fix)."""
    import optuna

    problem = pruner_problem(name)
    if problem:
        raise ValueError(problem)
    kinds = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
             "none": optuna.pruners.NopPruner}
    kwargs = dict(options or {})
    try:
        return kinds[name](**kwargs)
    except TypeError as error:
        raise ValueError(f"hydra.sweeper.pruners.{name}: {error}. Its options are Optuna's "
                         f"{kinds[name].__name__} arguments") from None
