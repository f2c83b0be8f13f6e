"""Cross-validation across the runs of a sweep: per-fold figures at each run's best epoch, their mean and
sd over folds, and the pooled out-of-fold (OOF) AUROC with a bootstrap interval.

A k-fold sweep (`python train.py -m data.n_folds=5 data.fold=0,1,2,3,4`) leaves one MLflow run per fold.
Each run logged its validation metrics per epoch and, at the end of training, the best epoch's validation
scores as `validation/scores.csv` (`pneumo.training.callbacks.BestEpochFigures`). Read here through an
MlflowClient; `SweepSummary` prints the result and logs it to the sweep's summary run.
"""
from __future__ import annotations

import csv
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.evaluation.definedness import json_safe

FOLD_KEY, N_FOLDS_KEY = "data.fold", "data.n_folds"
METRICS = ("val/auroc", "val/sensitivity", "val/specificity", "val/ppv", "val/npv", "val/loss")
SCORES_ARTIFACT = "validation/scores.csv"


def is_cross_validation(runs: list[Any]) -> bool:
    """True when the runs carry a data.n_folds param other than None (MLflow params are strings)."""
    return any(run.data.params.get(N_FOLDS_KEY) not in (None, "None", "null", "") for run in runs)


def best_epoch_metrics(client: Any, run_id: str, objective: str, descending: bool,
                       names: tuple[str, ...]) -> dict[str, float]:
    """Each metric of `names` at the step where `objective` was best (the first such step, as the best
    checkpoint keeps the first of equal scores). Metrics not logged at that step are left out; {} when
    the objective was never logged."""
    history = client.get_metric_history(run_id, objective)
    if not history:
        return {}
    sign = 1.0 if descending else -1.0
    best = max(history, key=lambda m: (sign * m.value, -m.step))
    found = {}
    for name in names:
        at_step = [m for m in client.get_metric_history(run_id, name) if m.step == best.step]
        if at_step:
            found[name] = float(at_step[-1].value)
    return found


def fold_scores(client: Any, run_id: str) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(paths, labels int64 (N,), probabilities float64 (N,)) from a run's validation/scores.csv; None
    when the run has none (it failed, or ran without the BestEpochFigures callback)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = client.download_artifacts(run_id, SCORES_ARTIFACT, folder)
        except Exception:  # MLflow raises its own exception types per store for a missing artifact
            return None
        with open(local, newline="") as handle:
            rows = list(csv.DictReader(handle))
    return ([row["path"] for row in rows], np.array([int(row["label"]) for row in rows], dtype=np.int64),
            np.array([float(row["probability"]) for row in rows], dtype=np.float64))


def _mean_sd(values: list[float]) -> dict[str, float | int]:
    """Mean and sample sd (ddof=1; NaN for one value) over the folds that have the metric."""
    array = np.array(values, dtype=np.float64)
    return {"mean": float(array.mean()), "sd": float(array.std(ddof=1)) if len(array) > 1 else math.nan,
            "n_folds": len(array)}


def summarize_folds(client: Any, runs: list[Any], objective: str, descending: bool = True,
                    n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The cross-validation summary of one configuration's fold runs (MLflow Run objects).

    Returns a JSON-ready dict: `folds` (per run: fold, run id and name, status, best-epoch metrics, number
    of OOF scores), `metrics` ({name: {mean, sd, n_folds}} over the best-epoch values), and `oof`:
    the pooled out-of-fold scores' n_images, n_positive, n_unique_paths, AUROC and its stratified
    percentile bootstrap (1 - 0.05) interval (`pneumo.evaluation.metrics`), or None without scores.
    `complete` is False when a fold of 0 .. n_folds-1 has no run or no scores.
    """
    from pneumo.evaluation.metrics import binary_metrics, bootstrap_ci

    names = tuple(dict.fromkeys((objective, *METRICS)))
    folds, labels, probs, paths = [], [], [], []
    for run in sorted(runs, key=lambda r: int(r.data.params.get(FOLD_KEY, -1))):
        figures = best_epoch_metrics(client, run.info.run_id, objective, descending, names)
        scores = fold_scores(client, run.info.run_id)
        if scores is not None:
            paths += scores[0]
            labels.append(scores[1])
            probs.append(scores[2])
        folds.append({"fold": int(run.data.params.get(FOLD_KEY, -1)), "run_id": run.info.run_id,
                      "run_name": run.info.run_name, "status": run.info.status, "best_epoch": figures,
                      "n_oof": 0 if scores is None else len(scores[1])})
    n_folds = int(runs[0].data.params[N_FOLDS_KEY])
    metrics = {name: _mean_sd([f["best_epoch"][name] for f in folds if name in f["best_epoch"]])
               for name in names if any(name in f["best_epoch"] for f in folds)}
    oof = None
    if labels:
        y, p = np.concatenate(labels), np.concatenate(probs)
        both = len(set(y.tolist())) == 2
        low, high = bootstrap_ci(y, p, 0.5, n_resamples, seed)["auroc"] if both else (math.nan, math.nan)
        oof = {"n_images": int(len(y)), "n_positive": int(y.sum()), "n_unique_paths": len(set(paths) - {""}),
               "auroc": binary_metrics(y, p, 0.5)["auroc"] if both else math.nan,
               "auroc_ci": [low, high], "ci_level": 0.95, "n_resamples": n_resamples}
    complete = sorted(f["fold"] for f in folds if f["n_oof"]) == list(range(n_folds))
    return {"n_folds": n_folds, "objective": objective, "best_epoch_by": objective, "complete": complete,
            "folds": folds, "metrics": metrics, "oof": oof}


def summary_markdown(summary: dict[str, Any], title: str = "Cross-validation") -> str:
    """The summary as Markdown: mean ± sd per metric, the pooled OOF AUROC, then one row per fold."""
    lines = [f"## {title}: {summary['n_folds']} folds"
             + ("" if summary["complete"] else " (INCOMPLETE: some folds have no run or no scores)"), "",
             f"Each fold at its best epoch by {summary['best_epoch_by']}; sd over folds (ddof=1).", "",
             "| metric | mean ± sd | folds |", "|---|---|---|"]
    lines += [f"| {name} | {m['mean']:.4f} ± {m['sd']:.4f} | {m['n_folds']} |"
              for name, m in summary["metrics"].items()]
    oof = summary["oof"]
    if oof:
        low, high = oof["auroc_ci"]
        lines += ["", f"Pooled out-of-fold AUROC: {oof['auroc']:.4f} (95% bootstrap CI {low:.4f}–{high:.4f}, "
                      f"{oof['n_resamples']} resamples) over {oof['n_images']} images ({oof['n_positive']} positive)"]
    names = list(summary["metrics"])
    lines += ["", "| fold | run | status | " + " | ".join(names) + " | OOF images |",
              "|---|---|---|" + "---|" * (len(names) + 1)]
    for fold in summary["folds"]:
        cells = " | ".join(f"{fold['best_epoch'][n]:.4f}" if n in fold["best_epoch"] else "" for n in names)
        lines.append(f"| {fold['fold']} | {fold['run_name']} | {fold['status']} | {cells} | {fold['n_oof']} |")
    return "\n".join(lines)


def summary_tags(summary: dict[str, Any], prefix: str = "cv") -> dict[str, str]:
    """Tags for the summary run (tags, not metrics: see SweepSummary): cv.n_folds, cv.complete,
    cv.<metric>.mean / .sd, cv.auroc_oof, cv.auroc_oof_ci_low / _high, cv.n_oof."""
    tags = {f"{prefix}.n_folds": str(summary["n_folds"]), f"{prefix}.complete": str(summary["complete"]).lower()}
    for name, m in summary["metrics"].items():
        tags[f"{prefix}.{name}.mean"], tags[f"{prefix}.{name}.sd"] = f"{m['mean']:.6g}", f"{m['sd']:.6g}"
    if summary["oof"]:
        oof = summary["oof"]
        low, high = oof["auroc_ci"]
        tags |= {f"{prefix}.auroc_oof": f"{oof['auroc']:.6g}", f"{prefix}.auroc_oof_ci_low": f"{low:.6g}",
                 f"{prefix}.auroc_oof_ci_high": f"{high:.6g}", f"{prefix}.n_oof": str(oof["n_images"])}
    return tags


def group_runs(runs: list[Any], swept: list[str]) -> dict[str, list[Any]]:
    """The fold runs grouped by configuration: the values of the swept keys other than data.fold
    ({'': runs} when only the fold is swept). Runs without a data.fold param are left out."""
    keys = [key for key in swept if key != FOLD_KEY]
    groups: dict[str, list[Any]] = {}
    for run in runs:
        if FOLD_KEY not in run.data.params:
            continue
        label = ",".join(f"{key}={run.data.params.get(key)}" for key in keys)
        groups.setdefault(label, []).append(run)
    return groups


def write_artifacts(folder: Path, summaries: dict[str, dict[str, Any]], markdown: str) -> list[Path]:
    """cross_validation.json ({group label: summary}) and cross_validation.md in `folder`."""
    import json

    json_path, md_path = folder / "cross_validation.json", folder / "cross_validation.md"
    json_path.write_text(json.dumps(json_safe(summaries), indent=1, allow_nan=False))  # NaN (one fold's sd) -> null
    md_path.write_text(markdown + "\n")
    return [json_path, md_path]
