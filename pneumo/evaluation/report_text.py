"""The clinical report as text: the printed table with intervals and the 2x2 matrix, and the comparison
with the training run's validation figures. report.md embeds the same text (see `report.py`).

A metric not defined on the set (metrics.json ``"value": null``) is printed as
``not defined (<reason>)``; a defined one without an interval (one image) shows ``no interval`` and the
reason below the table, as do figures undefined at 0.5 only."""
from __future__ import annotations

import math
from typing import Any

from pneumo.evaluation.subgroups import subgroup_table_lines

TABLE_ROWS = (("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy"),
              ("sensitivity", "Sensitivity (recall)"), ("specificity", "Specificity"),
              ("ppv", "Precision (PPV)"), ("npv", "NPV"), ("f1", "F1"), ("auroc", "AUROC"), ("auprc", "AUPRC"),
              ("brier", "Brier score"), ("ece", "Calibration error (ECE)"))


def _defined(value: Any) -> bool:
    """A number the report can print: not None, not NaN (an older report or a checkpoint's NaN)."""
    return value is not None and math.isfinite(float(value))


def format_table(report: dict[str, Any]) -> str:
    """The clinical table: metrics with 95% CIs at the operating threshold, and the 2x2 matrix.

    ``report`` is metrics.json's payload (see :func:`pneumo.evaluation.metrics.clinical_report`) with
    ``at_0.5`` (key -> float or None) and optionally ``at_0.5_not_defined`` (key -> reason), ``data``,
    ``figures_left_out`` and ``training_validation``. Raises KeyError when a required part is missing.
    """
    threshold, metrics, cm = report["threshold"], report["metrics"], report["confusion_matrix"]
    n, data = report["n"], report.get("data", {})
    split = "every labelled image" if data.get("split") == "all" else "test split"
    where = f"{data['name']}, {split}" if "name" in data else split
    images = f"{n['total']} image{'' if n['total'] == 1 else 's'}"
    lines = [f"{'External data' if data.get('external') else 'Data'}: {where}: {images} "
             f"({n['positive']} pneumonia, {n['negative']} normal)",
             f"Operating threshold {threshold['value']:.3f} (policy: {threshold['policy']}); "
             f"95% CI from a stratified bootstrap"]
    if threshold.get("note"):
        lines.append(f"Note: threshold {threshold['note']}")
    lines += [f"Note: {note}" for note in report.get("notes", [])]
    lines += ["", f"{'metric':<25}{'value':>7}  {'95% CI':<16}{'at 0.5':>7}"]
    at_half, half_reasons = report["at_0.5"], report.get("at_0.5_not_defined", {})
    footnotes: dict[str, list[str]] = {}
    for key, label in TABLE_ROWS:
        entry, half = metrics[key], at_half.get(key)
        half_text = f"{half:>7.3f}" if _defined(half) else f"{'n/d':>7}"
        if not _defined(entry["value"]):
            line = f"{label:<25}not defined ({entry.get('reason', 'undefined on this set')})"
            if _defined(half):
                line += f"; at 0.5: {half:.3f}"
            lines.append(line)
            continue
        if entry.get("ci95") and all(_defined(bound) for bound in entry["ci95"]):
            ci_text = f"[{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"
        else:
            ci_text = "no interval"
            footnotes.setdefault(f"no interval: {entry.get('ci_reason', 'not estimable')}", []).append(label)
        lines.append(f"{label:<25}{entry['value']:>7.3f}  {ci_text:<16}{half_text}")
        if not _defined(half):
            footnotes.setdefault(f"n/d at 0.5: not defined, {half_reasons.get(key, 'undefined at 0.5')}",
                                 []).append(label)
    lines += [f"  {text} ({', '.join(labels)})" for text, labels in footnotes.items()]
    lines += calibration_lines(report)
    width = max(11, max(len(str(v)) for v in cm.values()) + 2)
    lines += ["", "Confusion matrix (rows: true class, columns: predicted)",
              f"{'':<16}{'NORMAL':>{width}}{'PNEUMONIA':>{width}}",
              f"{'true NORMAL':<16}{cm['tn']:>{width}}{cm['fp']:>{width}}",
              f"{'true PNEUMONIA':<16}{cm['fn']:>{width}}{cm['tp']:>{width}}"]
    left_out = report.get("figures_left_out") or {}
    if left_out:
        lines += ["", "Figures left out: " + "; ".join(f"{name} ({reason})" for name, reason in left_out.items())]
    lines += comparison_lines(report)
    lines += subgroup_table_lines(report)
    return "\n".join(lines)


def calibration_lines(report: dict[str, Any]) -> list[str]:
    """ECE and Brier before and after temperature scaling, with 95% CIs (metrics.json ``calibration``).
    Empty for a report without it (older metrics.json)."""
    calibration = report.get("calibration")
    if not calibration:
        return []
    if calibration.get("method") == "temperature":
        head = (f"Calibration: temperature scaling, T = {calibration['temperature']:.3f}, fitted on the training "
                f"run's validation split ({calibration.get('n_images', '?')} images); probabilities above are calibrated")
    else:
        head = "Calibration: none (T = 1); " + calibration.get("note", "uncalibrated probabilities")
    lines = ["", head]
    for key, label in (("ece", "ECE"), ("brier", "Brier score")):
        for when in ("before", "after"):
            entry = calibration.get(f"{key}_{when}") or {}
            if not _defined(entry.get("value")):
                continue
            ci = entry.get("ci95")
            ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and all(_defined(b) for b in ci) else "no interval"
            lines.append(f"{label + ' ' + when:<25}{entry['value']:>7.3f}  {ci_text:<16}")
    return lines


COMPARED = (("auroc", "AUROC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
            ("ppv", "Precision (PPV)"), ("balanced_accuracy", "Balanced accuracy"))


def comparison_lines(report: dict[str, Any]) -> list[str]:
    """The training run's validation figures beside these, at the same threshold: how the model transfers.

    A figure undefined on either side (None or NaN) is printed as ``not defined`` and has no change.
    Empty when the checkpoint stored no validation figures.
    """
    validation = report.get("training_validation")
    if not validation:
        return []
    trained_on = report["data"]["training_data"]["name"]
    here = report["data"]["name"]
    lines = ["", f"At the operating threshold: training validation ({trained_on}, {validation['n_images']} images) "
                 f"vs {here}", f"{'metric':<25}{'validation':>13}{'here':>13}{'change':>9}"]
    for key, label in COMPARED:
        before, after = validation["at_threshold"].get(key), report["metrics"][key]["value"]
        cells = [f"{value:>13.3f}" if _defined(value) else f"{'not defined':>13}" for value in (before, after)]
        change = f"{after - before:>+9.3f}" if _defined(before) and _defined(after) else f"{'':>9}"
        lines.append(f"{label:<25}{cells[0]}{cells[1]}{change}")
    return lines
