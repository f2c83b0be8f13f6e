"""Subgroup results: sensitivity, specificity and AUROC per sex, age band and view, with 95% intervals.

`evaluate.py ... subgroups=[sex,age_band,view]` splits the evaluated images by each attribute the data
config maps (`pneumo.data.attributes`: a label table's columns or DICOM header fields) and reports, per
group, the number of images (PNEUMONIA and NORMAL) and the three figures at the checkpoint's operating
threshold. Every figure comes from :func:`pneumo.evaluation.metrics.clinical_report` on the group's
images: the same definitions, the same stratified bootstrap (the run's bootstrap.resamples and seed) and
the same rules for what is not defined (:mod:`pneumo.evaluation.definedness`: sensitivity needs a
PNEUMONIA image, specificity a NORMAL one, AUROC both), so a group's row reads like the overall table.

A group is shown whatever its size but flagged when it holds fewer than `subgroup_min_size` images; a
metric is flagged where the class it draws on (PNEUMONIA for sensitivity, NORMAL for specificity, the
smaller one for AUROC) has fewer than `subgroup_min_class` images in the group. A flag says the interval
is wide or rests on few cases, not that the figure is wrong. Images with a missing value are the group
"unknown". metrics.json holds ``subgroups[attribute][group] = {"n", "positives", "negatives",
"small", "flags", "sensitivity": {...}, "specificity": {...}, "auroc": {...}}`` (metric entries as in
``metrics``, each with ``"flag"`` when flagged) and ``subgroup_settings``.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.data.attributes import UNKNOWN, group_order, group_values, subgroups_problem
from pneumo.evaluation.metrics import clinical_report

__all__ = ["SUBGROUP_METRICS", "add_subgroups", "requested_subgroups", "subgroup_report", "subgroup_table_lines"]

#: The figures reported per group, in table and plot order, with their labels.
SUBGROUP_METRICS: dict[str, str] = {"sensitivity": "Sensitivity", "specificity": "Specificity", "auroc": "AUROC"}


def _drawn_on(key: str, positives: int, negatives: int) -> tuple[str, int]:
    """The class a metric's estimate rests on and its count in the group (AUROC: the smaller class)."""
    if key == "sensitivity":
        return "PNEUMONIA", positives
    if key == "specificity":
        return "NORMAL", negatives
    return ("PNEUMONIA", positives) if positives <= negatives else ("NORMAL", negatives)


def _group_entry(labels: np.ndarray, probs: np.ndarray, threshold: float, policy: str, min_size: int,
                 min_class: int, n_resamples: int, seed: int) -> dict[str, Any]:
    """One group's row: counts, the three metric entries (from clinical_report) and the flags."""
    full = clinical_report(labels, probs, threshold, policy, n_resamples=n_resamples, seed=seed)
    positives, negatives = full["n"]["positive"], full["n"]["negative"]
    entry: dict[str, Any] = {"n": full["n"]["total"], "positives": positives, "negatives": negatives,
                             "small": full["n"]["total"] < min_size, "flags": []}
    if entry["small"]:
        entry["flags"].append(f"{entry['n']} image{'' if entry['n'] == 1 else 's'} < subgroup_min_size={min_size}")
    for key in SUBGROUP_METRICS:
        metric = dict(full["metrics"][key])
        if metric.get("reason"):
            metric["reason"] = metric["reason"].replace("in this set", "in this group")
        elif (drawn := _drawn_on(key, positives, negatives))[1] < min_class:
            metric["flag"] = f"{drawn[1]} {drawn[0]} image{'' if drawn[1] == 1 else 's'} < subgroup_min_class={min_class}"
            entry["flags"].append(f"{key}: {metric['flag']}")
        entry[key] = metric
    return entry


def subgroup_report(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                    groups: Mapping[str, Sequence[str]], threshold: float, policy: str = "fixed", *,
                    min_size: int = 30, min_class: int = 10, n_resamples: int = 1000,
                    seed: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """Per subgrouping and group, the counts and the sensitivity, specificity and AUROC with 95% intervals.

    Args:
        labels: (n,) 0 = NORMAL, 1 = PNEUMONIA.
        probs: (n,) P(PNEUMONIA) in [0, 1], predicted PNEUMONIA when >= threshold.
        groups: {subgrouping: [group of each image]} (`pneumo.data.attributes.group_values`), n each.
        threshold, policy: the operating threshold (the checkpoint's) and its policy name.
        min_size: groups with fewer images are flagged (`small`); >= 1.
        min_class: a metric is flagged where the class it draws on has fewer images; >= 1.
        n_resamples, seed: the stratified bootstrap's (clinical_report's).

    Returns:
        {subgrouping: {group: entry}} with groups in reading order ("unknown" last); see the module docstring.
    Raises:
        ValueError: a grouping's length differs from the labels', min_size or min_class < 1, or the
            labels/probabilities are invalid (as clinical_report raises).
    """
    y, p = np.asarray(labels).ravel(), np.asarray(probs, dtype=np.float64).ravel()
    if min_size < 1 or min_class < 1:
        raise ValueError(f"subgroup_min_size={min_size} and subgroup_min_class={min_class} must be >= 1")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, values in groups.items():
        values = np.asarray(list(values), dtype=object)
        if values.shape != y.shape:
            raise ValueError(f"subgrouping {name!r} has {values.size} values for {y.size} images")
        out[name] = {group: _group_entry(y[values == group], p[values == group], threshold, policy, min_size,
                                         min_class, n_resamples, seed)
                     for group in group_order(name, values.tolist())}
    return out


def _cell(entry: Mapping[str, Any]) -> str:
    """A metric as a table cell: `0.812 [0.615, 0.944]`, `*` appended when flagged; `n/d` or `no interval`."""
    if entry.get("value") is None:
        return "n/d"
    ci = entry.get("ci95")
    text = f"{entry['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{entry['value']:.3f} (no interval)"
    return text + ("*" if entry.get("flag") else "")


def subgroup_table_lines(report: Mapping[str, Any]) -> list[str]:
    """The printed subgroup table (report.md and report.html embed it): one row per group after the
    overall row, `*` on flagged figures and `!` on small groups, then what n/d and the flags mean.
    Empty when the report has no ``subgroups``."""
    subgroups = report.get("subgroups")
    if not subgroups:
        return []
    settings = report.get("subgroup_settings", {})
    min_size, min_class = settings.get("min_size", "?"), settings.get("min_class", "?")
    width = 22
    head = f"{'group':<22}{'n':>6}{'pneu':>6}{'norm':>6}  " + "".join(f"{label:<{width}}" for label in
                                                                    SUBGROUP_METRICS.values())
    n = report["n"]
    lines = ["", f"Subgroups at the operating threshold (95% CI, stratified bootstrap; ! group under "
                 f"subgroup_min_size={min_size} images, * figure resting on under subgroup_min_class={min_class} "
                 f"images of its class)", head,
             f"{'overall':<22}{n['total']:>6}{n['positive']:>6}{n['negative']:>6}  "
             + "".join(f"{_cell(report['metrics'][key]):<{width}}" for key in SUBGROUP_METRICS)]
    undefined: dict[str, list[str]] = {}
    for attribute, groups in subgroups.items():
        for group, entry in groups.items():
            label = f"{attribute}={group}" + (" !" if entry["small"] else "")
            lines.append(f"{label:<22}{entry['n']:>6}{entry['positives']:>6}{entry['negatives']:>6}  "
                         + "".join(f"{_cell(entry[key]):<{width}}" for key in SUBGROUP_METRICS))
            for key in SUBGROUP_METRICS:
                if entry[key].get("reason"):
                    undefined.setdefault(entry[key]["reason"], []).append(f"{attribute}={group} {key}")
    lines += [f"  n/d: not defined, {reason} ({', '.join(where)})" for reason, where in undefined.items()]
    if any(group == UNKNOWN for groups in subgroups.values() for group in groups):
        lines.append(f"  {UNKNOWN}: images whose value is missing or unreadable (ages over 120 years included)")
    return lines


# ---- evaluate.py's use ------------------------------------------------------------------------------
def _data_facts(data_cfg: Any) -> dict[str, Any]:
    """The keys of a data config `subgroups_problem` reads, resolved where they can be (else left out)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    facts = {}
    for key in ("attributes", "name", "csv", "root"):
        try:
            value = OmegaConf.select(data_cfg, key, default=None)
            facts[key] = (OmegaConf.to_container(value, resolve=True)
                          if isinstance(value, (DictConfig, ListConfig)) else value)
        except Exception:  # noqa: BLE001 - an interpolation only the running app resolves: not needed here
            continue
    return facts


def requested_subgroups(cfg: Any, data_cfg: Any, external: bool) -> list[str]:
    """evaluate.py's `subgroups`, checked against the data config the run evaluates, before any image is read.

    `external`: whether the data is another data set than the model was trained on (else evaluate.py used
    the checkpoint's data config, unless data= was named). Exits with one message and status 2 (no
    traceback) when a subgrouping is unknown or the data set cannot give it, e.g. a Kaggle folder.
    """
    given = cfg.get("subgroups") or []
    subgroups = [given] if isinstance(given, str) else [str(name) for name in given]
    if not subgroups:
        return []
    problem = subgroups_problem(subgroups, _data_facts(data_cfg))
    if problem:
        hint = ("" if external else " (evaluate.py takes the data config stored in the checkpoint unless data= "
                "is named on the command line: name data=<config> to use conf/data's current one)")
        print(f"Error: {problem}{hint}", file=sys.stderr)
        raise SystemExit(2)
    return subgroups


def read_subgroups(source: Any, files: Sequence[str], subgroups: Sequence[str]) -> dict[str, list[str]]:
    """The group of each of `files` for each of `subgroups` ({} when none is asked for), read before any
    image is scored. `source`: the data module's `DataSource` (its `attributes(files)`). Exits with one
    message and status 2 (no traceback, nothing written) when the attributes cannot be read, e.g. a mapped
    column missing from the CSV."""
    if not subgroups:
        return {}
    try:
        raw = source.attributes(list(files))
    except ValueError as error:
        print(f"Error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return group_values(raw, subgroups)


def add_subgroups(report: dict[str, Any], cfg: Any, source: Any, groups: Mapping[str, Sequence[str]],
                  labels: np.ndarray, probs: np.ndarray, output_dir: Path) -> None:
    """report["subgroups"] and report["subgroup_settings"] for `subgroups` on the evaluated `files`, and
    subgroups.png in output_dir; nothing when `subgroups` is empty.

    `groups`: `read_subgroups`' result, one group per evaluated image and subgrouping; `source`: the data
    module's `DataSource` (its attribute mapping is recorded); `cfg`: evaluate.py's config
    (subgroup_min_size, subgroup_min_class, bootstrap).
    """
    if not groups:
        return
    from pneumo.evaluation.forest_plot import plot_subgroups  # matplotlib: only when there is a plot to draw

    threshold = report["threshold"]
    min_size, min_class = int(cfg.get("subgroup_min_size", 30)), int(cfg.get("subgroup_min_class", 10))
    report["subgroups"] = subgroup_report(labels, probs, groups, threshold["value"],
                                          threshold["policy"], min_size=min_size, min_class=min_class,
                                          n_resamples=int(cfg.bootstrap.resamples), seed=int(cfg.bootstrap.seed))
    report["subgroup_settings"] = {"min_size": min_size, "min_class": min_class,
                                   "metrics": list(SUBGROUP_METRICS), "attributes": getattr(source, "attribute_map", {})}
    plot_subgroups(report["subgroups"], report["metrics"], SUBGROUP_METRICS, output_dir / "subgroups.png",
                   min_size, min_class)
