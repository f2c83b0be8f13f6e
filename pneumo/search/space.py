"""The search space, written as Hydra sweep overrides, as Optuna distributions and back.

`conf/hparams_search/*.yaml` lists `hydra.sweeper.params` such as `optim.lr: tag(log, interval(1e-5, 1e-2))`,
`model.net.dropout: interval(0.0, 0.6)`, `model.freeze_epochs: range(0, 3)` or `model: choice(baseline,
efficientnet_lite0)` (a config group), and a sweep override on the command line adds a dimension the same
way. `search_space` turns them into Optuna distributions; `trial_overrides` turns a trial's values back
into the overrides of its training job.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override.

    interval(a, b) -> FloatDistribution (`tag(log, ...)`: log scale; `tag(int, ...)`: IntDistribution);
    range(a, b[, step]) over integers -> IntDistribution of a..b-1; any other range or choice(...) ->
    CategoricalDistribution of the values as the command line writes them (so a group option or a quoted
    string goes back into the override unchanged).
    Raises ValueError for a sweep Optuna cannot sample (a glob), naming the override.
    """
    value = override.value()
    if isinstance(value, Glob):
        raise ValueError(f"{override.input_line}: an Optuna search takes interval(...), range(...) or "
                         f"choice(...) values, not a glob: list the options with choice(...)")
    if override.is_interval_sweep():
        tags = set(value.tags)
        if "int" in tags:
            return IntDistribution(int(value.start), int(value.end), log="log" in tags)
        return FloatDistribution(float(value.start), float(value.end), log="log" in tags)
    if override.is_range_sweep():
        numbers = (value.start, value.stop, value.step)
        if all(isinstance(n, int) for n in numbers) and value.step > 0 and value.stop > value.start:
            high = value.start + ((value.stop - 1 - value.start) // value.step) * value.step
            return IntDistribution(int(value.start), int(high), step=int(value.step))
    if override.is_choice_sweep() or override.is_range_sweep():
        return CategoricalDistribution(list(override.sweep_string_iterator()))
    raise ValueError(f"{override.input_line}: an Optuna search takes interval(...), range(...) or "
                     f"choice(...) values (with tag(log, ...) for a log scale), not this sweep")


def search_space(params: Mapping[str, Any], arguments: Iterable[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """(distributions by key, fixed overrides) from the search config's `params` and the command line.

    A command-line sweep override (`optim.lr=interval(1e-4,1e-2)`) adds or replaces a dimension; every
    other command-line override is passed to each trial as it is, as are non-sweep values in `params`.
    Raises ValueError for a sweep that cannot be sampled, and hydra's OverrideParseException for a value
    that does not parse (naming it).
    """
    parser = OverridesParser.create()
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    lines = [f"{key}={value}" for key, value in params.items()]
    for override in parser.parse_overrides(lines) + parser.parse_overrides(list(arguments)):
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution(override)
            fixed = [line for line in fixed if parser.parse_override(line).get_key_element() != key]
        else:
            space.pop(key, None)
            fixed.append(override.input_line)
    return space, fixed


def override_value(value: Any) -> str:
    """A sampled value as an override writes it: floats in full (the trial's exact value), bools lower case."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def trial_overrides(params: Mapping[str, Any], fixed: list[str], trial_number: int) -> list[str]:
    """The overrides of one trial's job: the trial number (a hidden key the job reports under), the
    sampled values, then the fixed overrides. Values of a choice are already override strings."""
    sampled = [f"{key}={override_value(value)}" for key, value in params.items()]
    return [f"+optuna.trial_number={trial_number}", *sampled, *fixed]

