"""Temperature scaling: one parameter T > 0 that turns a logit z into the calibrated probability sigmoid(z / T).

Method: Guo, Pleiss, Sun & Weinberger (2017), "On Calibration of Modern Neural Networks", ICML, sec. 4.2:
T minimises the negative log-likelihood of held-out (validation) labels. Here it is a 1-D bounded scipy
optimisation (`scipy.optimize.minimize_scalar`, method "bounded") of the NLL over log T, in float64; no
new dependency. T > 1 softens an over-confident model, T < 1 sharpens an under-confident one. Dividing
by T > 0 is strictly monotone, so the ranking of the images (AUROC, AUPRC) is unchanged as long as
sigmoid(z / T) does not round to exactly 0 or 1 in float64 (|z / T| < ~36): a fit that runs to the lower
bound of T (a validation set the model separates perfectly) is therefore not used; a threshold on the
probability moves with T.

Where it is stored: ``checkpoint["pneumo"]["calibration"]`` = :func:`calibration_record`; a checkpoint
without it (written before calibration existed) is uncalibrated (T = 1, :func:`checkpoint_temperature`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit

from pneumo.evaluation.metrics import binary_metrics, bootstrap_ci

METHODS = ("temperature", "none")
T_BOUNDS = (0.01, 100.0)  # a perfectly separable set drives T to the lower bound (NLL -> 0 as T -> 0)


def _check(labels: Any, logits: Any) -> tuple[np.ndarray, np.ndarray]:
    """labels (n,) 0/1 and logits (n,) finite -> float64 arrays; ValueError naming the problem."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    if y.size != z.size:
        raise ValueError(f"calibration needs one logit per label: {z.size} logits, {y.size} labels")
    if y.size == 0:
        raise ValueError("calibration needs at least one labelled image; got none")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("calibration labels must be 0 (NORMAL) or 1 (PNEUMONIA)")
    if not np.isfinite(z).all():
        raise ValueError(f"calibration needs finite logits; {int((~np.isfinite(z)).sum())} are NaN or infinite")
    return y, z


def nll(labels: Any, logits: Any, temperature: float) -> float:
    """Mean binary negative log-likelihood of sigmoid(logits / temperature), computed stably in float64."""
    y, z = _check(labels, logits)
    s = z / float(temperature)
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def fit_temperature(labels: Any, logits: Any, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The temperature T minimising the NLL of sigmoid(logits / T) on these labels (Guo et al. 2017).

    labels: (n,) 0/1 (any int/float/bool dtype); logits: (n,) finite floats (pre-sigmoid scores).
    Returns T as a Python float within ``bounds``. Raises ValueError on empty or mismatched input,
    non-finite logits, or a one-class set (the likelihood of one class alone is minimised by an
    infinitely confident model: T is not identifiable).
    """
    y, z = _check(labels, logits)
    if y.min() == y.max():
        raise ValueError(f"temperature scaling needs both classes; these {y.size} labels are all "
                         f"{'PNEUMONIA' if y[0] else 'NORMAL'}")
    low, high = math.log(bounds[0]), math.log(bounds[1])

    def loss(log_t: float) -> float:
        s = z * math.exp(-log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    result = minimize_scalar(loss, bounds=(low, high), method="bounded", options={"xatol": 1e-8})
    return float(math.exp(result.x))


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities sigmoid(logits / temperature): (n,) float64 from any-shaped logits.
    Raises ValueError unless temperature is finite and > 0."""
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return expit(np.asarray(logits, dtype=np.float64).reshape(-1) / t)


def calibration_record(labels: Any, logits: Any, method: str) -> dict[str, Any]:
    """What the checkpoint stores: ``{"method": "temperature", "temperature": T, "fitted_on": "validation",
    "n_images": n}``; ``{"method": "none"}`` for method "none"; and ``{"method": "none", "note": ...}``
    when these images cannot fit it (one class). Raises ValueError for an unknown method."""
    if method not in METHODS:
        raise ValueError(f"calibration={method} is not known: use one of {', '.join(METHODS)}")
    if method == "none":
        return {"method": "none"}
    y, _ = _check(labels, logits)
    if y.min() == y.max():
        return {"method": "none", "note": "validation held one class only: no temperature fitted"}
    temperature = fit_temperature(labels, logits)
    if not T_BOUNDS[0] * 1.05 < temperature < T_BOUNDS[1] / 1.05:
        # On a perfectly separated validation set the NLL keeps falling as T -> 0: T runs to its bound and
        # sigmoid(z / T) would round most scores to exactly 0 or 1, tying them and changing AUROC.
        return {"method": "none", "note": f"the temperature ran to its bound ({temperature:.3g}): validation "
                                          f"separates the classes, T is not identifiable; left uncalibrated"}
    return {"method": "temperature", "temperature": temperature, "fitted_on": "validation", "n_images": int(y.size)}


def checkpoint_temperature(pneumo: dict[str, Any] | None) -> float:
    """T of a checkpoint's ``pneumo`` metadata: its calibration's temperature, else 1.0 (uncalibrated)."""
    record = (pneumo or {}).get("calibration") or {}
    return float(record["temperature"]) if record.get("method") == "temperature" else 1.0


def _entry(value: float, interval: tuple[float, float]) -> dict[str, Any]:
    ci = [float(b) for b in interval] if all(math.isfinite(b) for b in interval) else None
    return {"value": float(value), "ci95": ci} if ci else {"value": float(value), "ci95": None,
                                                           "ci_reason": "no interval on this set"}


def calibration_report(labels: Any, logits: Any, record: dict[str, Any], n_resamples: int = 1000,
                       seed: int = 0) -> dict[str, Any]:
    """metrics.json's ``calibration``: the method, T, and ECE and Brier before (T = 1) and after (T), each
    ``{"value", "ci95"}``. The intervals are stratified percentile bootstraps as for the other metrics
    (:func:`pneumo.evaluation.metrics.bootstrap_ci`); before and after use the same seed, so the same
    resamples. labels (n,) 0/1, logits (n,) floats. Raises ValueError on invalid input."""
    y, z = _check(labels, logits)
    temperature = checkpoint_temperature({"calibration": record})
    out: dict[str, Any] = {key: record[key] for key in ("method", "fitted_on", "n_images", "note") if key in record}
    out["temperature"] = temperature
    for name, t in (("before", 1.0), ("after", temperature)):
        probs = apply_temperature(z, t)
        point = binary_metrics(y.astype(int), probs, 0.5)  # ECE and Brier do not depend on the threshold
        ci = bootstrap_ci(y, probs, 0.5, n_resamples=n_resamples, seed=seed)
        for key in ("ece", "brier"):
            out[f"{key}_{name}"] = _entry(point[key], ci[key])
    return out
