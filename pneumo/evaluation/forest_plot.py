"""subgroups.png: a forest plot of the subgroup results, one row per group, one panel per metric.

Each row is one group of one attribute (sex=F, age_band=0-17, view=AP, ...), labelled with its number
of images; each panel (sensitivity, specificity, AUROC) shows the group's value as a dot and its 95%
bootstrap interval as a line, and a dashed vertical line at the overall value on the evaluated set. A
group whose interval lies clearly off that line is where the model behaves differently. Flagged
figures (a group under subgroup_min_size images, or a figure resting on under subgroup_min_class images
of its class) are drawn hollow and grey; a figure not defined in a group (no PNEUMONIA image for
sensitivity, ...) is written as "n/d". The numbers are metrics.json's ``subgroups``
(:func:`pneumo.evaluation.subgroups.subgroup_report`), so the figure and the table always agree.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pneumo.evaluation.plots import save_figure

__all__ = ["plot_subgroups"]

_SOLID, _FLAGGED, _OVERALL = "#1f4e9a", "#9a9a9a", "#c0392b"


def _rows(subgroups: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, Mapping[str, Any] | None]]:
    """(label, attribute, entry) top to bottom: a heading row (entry None) before each attribute's groups."""
    rows: list[tuple[str, str, Mapping[str, Any] | None]] = []
    for attribute, groups in subgroups.items():
        rows.append((attribute, attribute, None))
        for group, entry in groups.items():
            rows.append((f"{group}  (n={entry['n']}, {entry['positives']} pneumonia)"
                         + ("  !" if entry["small"] else ""), attribute, entry))
    return rows


def plot_subgroups(subgroups: Mapping[str, Mapping[str, Any]], overall: Mapping[str, Mapping[str, Any]],
                   metrics: Mapping[str, str], path: str | Path, min_size: int | None = None,
                   min_class: int | None = None) -> Path:
    """Draw the forest plot of `subgroups` (metrics.json's ``subgroups``) into `path` (PNG); return it.

    Args:
        subgroups: {attribute: {group: entry}}, each entry with n, positives, negatives, small and an entry
            per metric of `metrics` ({"value", "ci95", optional "flag" or "reason"}).
        overall: metrics.json's ``metrics`` (the whole set): the dashed line of each panel, when defined.
        metrics: {metric key: panel title}, one panel each, left to right
            (`pneumo.evaluation.subgroups.SUBGROUP_METRICS`).
        min_size, min_class: the flag thresholds, for the caption.
    Raises:
        ValueError: `subgroups` holds no group, or `metrics` is empty.
    """
    import matplotlib.pyplot as plt  # plots (imported above) has chosen the Agg backend

    rows = _rows(subgroups)
    if not any(entry is not None for _, _, entry in rows) or not metrics:
        raise ValueError("no subgroup to plot: subgroups holds no group or no metric is named")
    height = 1.7 + 0.34 * len(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), height), sharey=True, squeeze=False)
    axes = axes[0]
    positions = list(range(len(rows)))[::-1]  # first row at the top
    for ax, (key, title) in zip(axes, metrics.items()):
        for y, (_, attribute, entry) in zip(positions, rows):
            if entry is None:
                ax.axhspan(y - 0.5, y + 0.5, color="#eef1f6", zorder=0)
                continue
            metric = entry[key]
            if metric.get("value") is None:
                ax.text(0.5, y, "n/d", ha="center", va="center", color=_FLAGGED, fontsize=8, style="italic")
                continue
            flagged = bool(entry["small"] or metric.get("flag"))
            color = _FLAGGED if flagged else _SOLID
            if metric.get("ci95"):
                ax.plot(metric["ci95"], [y, y], color=color, lw=1.6, solid_capstyle="butt", zorder=2)
            ax.plot([metric["value"]], [y], "o", ms=6, zorder=3, color=color,
                    markerfacecolor="white" if flagged else color, markeredgewidth=1.5)
        value = (overall.get(key) or {}).get("value")
        if value is not None:
            ax.axvline(value, color=_OVERALL, ls="--", lw=1.2, zorder=1)
            title = f"{title}\n(overall {value:.3f}, dashed)"
        ax.set(xlim=(-0.02, 1.02), title=title, xlabel="value, 95% CI")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions)
    axes[0].set_yticklabels([label for label, _, _ in rows], fontsize=8)
    axes[0].set_ylim(-0.7, len(rows) - 0.3)
    for tick, (_, _, entry) in zip(axes[0].get_yticklabels(), rows):
        if entry is None:
            tick.set_fontweight("bold")
            tick.set_fontsize(9)
    caption = ("filled: figure to read; hollow grey: flagged"
               + (f" (group under {min_size} images, marked !" if min_size is not None else " (small group")
               + (f", or under {min_class} images of the class the figure rests on)" if min_class is not None
                  else ", or few images of one class)")
               + "; n/d: not defined in the group")
    fig.suptitle("Subgroups at the operating threshold", fontsize=12)
    fig.text(0.5, -0.01, caption, ha="center", va="top", fontsize=8, color="#444")
    fig.tight_layout()
    return save_figure(fig, path)
