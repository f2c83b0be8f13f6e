"""The end of a search, said plainly: how many trials in which state, the best one, and a table of all."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

FINISHED_STATES = ("COMPLETE", "PRUNED")


def counts(trials: list[Any]) -> dict[str, int]:
    """{state name: number of trials} (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    found: dict[str, int] = {}
    for trial in trials:
        found[trial.state.name] = found.get(trial.state.name, 0) + 1
    return found


def _score(trial: Any) -> float | None:
    """The objective of a complete trial, the last reported one of a pruned trial, else None."""
    if trial.state.name == "COMPLETE" and trial.value is not None:
        return float(trial.value)
    if trial.state.name == "PRUNED" and trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    return None


def summary_markdown(trials: list[Any], objective: str, maximize: bool = True,
                     run_names: Mapping[int, str] | None = None) -> str:
    """A Markdown table of the trials, best first: complete ones by objective, then pruned ones (by the
    last value they reported), then the rest. `run_names` maps trial number -> MLflow run name."""
    order = {"COMPLETE": 0, "PRUNED": 1}
    sign = -1.0 if maximize else 1.0

    def key(trial: Any) -> tuple[int, float, int]:
        score = _score(trial)
        bad = score is None or math.isnan(score)
        return (order.get(trial.state.name, 2), 0.0 if bad else sign * score, trial.number)

    names = sorted({name for trial in trials for name in trial.params})
    lines = [f"| trial | state | {objective} | epochs | " + " | ".join(names) + " | MLflow run |",
             "|---|---|---|---|" + "---|" * len(names) + "---|"]
    for trial in sorted(trials, key=key):
        score = _score(trial)
        cells = [str(trial.number), trial.state.name, "" if score is None else f"{score:.4f}",
                 str(len(trial.intermediate_values))]
        cells += [_short(trial.params.get(name)) for name in names]
        cells.append((run_names or {}).get(trial.number, ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline(study_name: str, storage: str, trials: list[Any], objective: str, best: Any | None) -> str:
    """One line: the study, where it lives, its trials by state and the best trial."""
    by_state = counts(trials)
    states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(by_state.items()))
    best_text = f"; best: trial {best.number}, {objective} {best.value:.4f}" if best is not None else ""
    return f"Search {study_name} ({storage}): {len(trials)} trials ({states}){best_text}"


def _short(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
