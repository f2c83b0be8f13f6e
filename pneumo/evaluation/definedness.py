"""Which figures of the clinical report a labelled set defines, and the one-line reason when it does not.

An external set may hold one class only (a pneumonia ward, a screening set of normals), a single image,
or scores that are all equal. The report then gives every metric that is defined on the set, and for
the others ``null`` with the reason, instead of stopping. The rules, on the set's confusion counts at
the operating threshold (1 = PNEUMONIA, predicted positive when ``probability >= threshold``):

* sensitivity and F1 need a PNEUMONIA image (F1 is the harmonic mean of PPV and sensitivity);
* specificity needs a NORMAL image;
* balanced accuracy, AUROC and AUPRC need both classes: they weigh or rank one class against the other
  (AUPRC of a set without NORMAL images is 1 whatever the model, so it is not reported as a figure);
* PPV needs an image predicted PNEUMONIA, NPV one predicted NORMAL (0/0 otherwise); on a one-class set
  they are defined and trivial (all-PNEUMONIA: PPV = 1 and NPV = 0 when anything is called NORMAL);
* accuracy, Brier score and ECE are defined on any non-empty set.

Intervals come from the stratified bootstrap (:func:`pneumo.evaluation.metrics.bootstrap_ci`): each
class is resampled on its own, so a class with one image is the same image in every resample. An
interval is therefore reported as not estimable (``ci95: null`` with ``ci_reason``) when every class the
metric draws on holds at most one image, e.g. any interval on a one-image set, or specificity with one
NORMAL image: a zero-width ``[v, v]`` would claim a certainty the data cannot give.

Nothing here imports :mod:`pneumo.evaluation.metrics`; it works on counts, so the metrics module can use it.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

#: Metrics that compare or rank one class against the other: undefined unless both classes are present.
NEED_BOTH_CLASSES: tuple[str, ...] = ("balanced_accuracy", "auroc", "auprc")
#: Metrics that need at least one PNEUMONIA image.
NEED_PNEUMONIA: tuple[str, ...] = ("sensitivity", "f1")
#: Metrics that need at least one NORMAL image.
NEED_NORMAL: tuple[str, ...] = ("specificity",)


def class_absence(n_positive: int, n_negative: int) -> str | None:
    """``'only PNEUMONIA in this set'`` / ``'only NORMAL in this set'`` when a class is absent, else None."""
    if n_positive and n_negative:
        return None
    if n_positive:
        return "only PNEUMONIA in this set"
    if n_negative:
        return "only NORMAL in this set"
    return "no labelled image in this set"


def undefined_reason(key: str, counts: Mapping[str, int], threshold: float) -> str | None:
    """Why metric ``key`` is not defined on a set with these confusion counts, or None when it is.

    ``counts`` has int keys tp, fp, tn, fn at ``threshold``. See the module docstring for the rules.
    """
    tp, fp, tn, fn = (int(counts[name]) for name in ("tp", "fp", "tn", "fn"))
    n_positive, n_negative = tp + fn, tn + fp
    absent = class_absence(n_positive, n_negative)
    if key in NEED_BOTH_CLASSES and absent:
        return absent
    if key in NEED_PNEUMONIA and n_positive == 0:
        return absent
    if key in NEED_NORMAL and n_negative == 0:
        return absent
    if key == "ppv" and tp + fp == 0:
        return f"no image predicted PNEUMONIA at threshold {threshold:.3f}"
    if key == "npv" and tn + fn == 0:
        return f"no image predicted NORMAL at threshold {threshold:.3f}"
    return None


def interval_reason(key: str, n_positive: int, n_negative: int) -> str | None:
    """Why the bootstrap cannot give ``key`` an interval on this set, or None when it can.

    Sensitivity draws on the PNEUMONIA images only, specificity on the NORMAL ones, every other metric
    on both; when each class it draws on holds at most one image, every resample is the same.
    """
    drawn = {"sensitivity": (n_positive,), "specificity": (n_negative,)}.get(key, (n_positive, n_negative))
    if max(drawn) > 1:
        return None
    if n_positive + n_negative == 1:
        return "one image: every bootstrap resample is that image"
    if key == "sensitivity":
        return "one PNEUMONIA image: every bootstrap resample holds the same one"
    if key == "specificity":
        return "one NORMAL image: every bootstrap resample holds the same one"
    return "one image per class: every bootstrap resample is the same set"


def metric_entry(key: str, value: float, ci: Sequence[float], counts: Mapping[str, int],
                 threshold: float) -> dict[str, Any]:
    """One metric as metrics.json holds it.

    ``{"value": float, "ci95": [lo, hi]}`` when defined and estimable;
    ``{"value": float, "ci95": None, "ci_reason": str}`` when defined without an interval;
    ``{"value": None, "ci95": None, "reason": str}`` when not defined on the set. A NaN ``value`` the
    rules did not foresee, or a NaN interval (undefined in every resample), is reported the same way.
    """
    reason = undefined_reason(key, counts, threshold)
    if reason is None and not math.isfinite(value):
        reason = "undefined on this set"
    if reason is not None:
        return {"value": None, "ci95": None, "reason": reason}
    n_positive = int(counts["tp"]) + int(counts["fn"])
    n_negative = int(counts["tn"]) + int(counts["fp"])
    ci_reason = interval_reason(key, n_positive, n_negative)
    if ci_reason is None and not all(math.isfinite(bound) for bound in ci):
        ci_reason = "undefined in every bootstrap resample"
    if ci_reason is not None:
        return {"value": float(value), "ci95": None, "ci_reason": ci_reason}
    return {"value": float(value), "ci95": [float(ci[0]), float(ci[1])]}


def bootstrap_notes(n_positive: int, n_negative: int) -> list[str]:
    """Sentences for the report when the stratified bootstrap meets a missing or single-image class."""
    notes = []
    absent = class_absence(n_positive, n_negative)
    if absent and n_positive + n_negative > 0:
        present = "PNEUMONIA" if n_positive else "NORMAL"
        notes.append(f"{absent}: the bootstrap resamples the {present} images alone; the metrics that need "
                     f"both classes are not defined")
    for count, name in ((n_negative, "NORMAL"), (n_positive, "PNEUMONIA")):
        if count == 1 and n_positive + n_negative > 1:
            notes.append(f"one {name} image: the stratified bootstrap keeps it in every resample, so the "
                         f"intervals leave out its sampling variability")
    return notes


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON ``null``) and numpy scalars made plain.

    ``json.dumps`` writes NaN as the token ``NaN``, which is not JSON; call this on anything bound for
    metrics.json. Dicts, lists and tuples are walked; other values are returned as they are.
    """
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = ["NEED_BOTH_CLASSES", "NEED_NORMAL", "NEED_PNEUMONIA", "bootstrap_notes", "class_absence",
           "interval_reason", "json_safe", "metric_entry", "undefined_reason"]
