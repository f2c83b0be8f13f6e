"""`python -m pneumo.bench.startup`: how long a user waits for the first word from the entry points.

Two figures, each from real `train.py` / `evaluate.py` processes:

* time to the first message: the wall time of a mistaken command line (a typo'd key, a wrong value, a
  missing `ckpt`) until the process exits with its message, the median of `repeats` runs. The bound on it
  (`FIRST_MESSAGE_BOUND_S`, 2 s) lives here, not in a timed test.
* time to the first training step: `train.py debug=fast` on a small demo set (written, and its decoded
  cache built, by one untimed run first), from the moment the process starts to the first
  `on_train_batch_start`, marked by `FirstStepMarker`, a callback added on the command line. Beside it,
  the import time of the heavy stack (`import torch, lightning, mlflow`) in a fresh interpreter.

Everything the runs write (MLflow store, caches, run folders) goes to a temporary folder, removed after.
Standard library only at import time: `FirstStepMarker` is built (importing Lightning) only when the
training process that instantiates it asks for it.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pneumo.paths import PROJECT_ROOT

FIRST_MESSAGE_BOUND_S = 2.0
# The small demo set of the first-step run (and of the wrong-value run, so that before the command-line
# check existed that mistake ran as far as it did for users: data loaded, model built, Lightning's assert).
DEMO_OVERRIDES = ("data=synthetic", "data.synthetic.n_train=80", "data.synthetic.n_test=40", "data.image_size=64")
# name -> (script, overrides as a user types them)
MISTAKES: dict[str, tuple[str, tuple[str, ...]]] = {
    "unknown_key": ("train.py", ("trainer.max_epoch=3",)),
    "wrong_value": ("train.py", ("trainer.max_epochs=abc", *DEMO_OVERRIDES)),
    "missing_ckpt": ("evaluate.py", ()),
}
HEAVY_IMPORT = "import torch, lightning, mlflow"


def isolated(folder: Path, run: str) -> list[str]:
    """Overrides that keep one run's MLflow store, caches and run folder inside `folder`."""
    store = folder / "mlruns"
    return [f"logger.tracking_uri=sqlite:///{store}/mlflow.db", f"logger.local_tracking_uri=sqlite:///{store}/mlflow.db",
            f"logger.artifact_location=file://{store}/artifacts", f"cache_dir={folder}/cache",
            f"hydra.run.dir={folder}/runs/{run}"]


def _run(script: str, overrides: Sequence[str], timeout: float = 900) -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds, finished process) of `python script overrides...` started from the project root."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / script), *overrides], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    return time.perf_counter() - start, done


def time_to_first_message(folder: Path, repeats: int) -> dict[str, Any]:
    """Median wall seconds of each mistaken command line until it exits, with its exit code and last line."""
    figures: dict[str, Any] = {}
    for name, (script, overrides) in MISTAKES.items():
        times, done = [], None
        for index in range(repeats):
            seconds, done = _run(script, [*overrides, *isolated(folder, f"{name}-{index}")])
            times.append(seconds)
        lines = done.stderr.strip().splitlines() if done is not None else []
        figures[name] = {"seconds": round(statistics.median(times), 3), "exit_code": done.returncode,
                         "last_line": lines[-1][:200] if lines else ""}
    return figures


FIRST_STEP_OVERRIDES = ("debug=fast", *DEMO_OVERRIDES,
                        "+callbacks.first_step._target_=pneumo.bench.startup.FirstStepMarker")


def time_to_first_step(folder: Path, run: str) -> float:
    """Seconds from starting `train.py debug=fast` on the demo set to its first training batch. The first
    call writes the demo set and its decoded cache under `folder`; time the second."""
    marker = folder / f"first_step-{run}.txt"
    overrides = [*FIRST_STEP_OVERRIDES, f"+callbacks.first_step.path={marker}", *isolated(folder, f"first-step-{run}")]
    started = time.time()
    _, done = _run("train.py", overrides)
    if done.returncode != 0 or not marker.exists():
        raise RuntimeError(f"train.py {' '.join(overrides)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return float(marker.read_text()) - started


def heavy_import_seconds() -> float:
    """Wall seconds of a fresh interpreter that imports torch, Lightning and MLflow, then exits."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", HEAVY_IMPORT], check=True, capture_output=True)
    return time.perf_counter() - start


def run_startup_bench(repeats: int = 3) -> dict[str, Any]:
    """Every start-up figure: the mistakes' times to their message (median of `repeats`), the bound on them,
    the time to the first training step and the heavy stack's import time, as one flat-ish dict."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pneumo-startup-") as name:
        folder = Path(name)
        time_to_first_step(folder, "prepare")  # writes the demo set and its cache: not timed
        mistakes = time_to_first_message(folder, repeats)
        first_step = time_to_first_step(folder, "timed")
    slowest = max(figure["seconds"] for figure in mistakes.values())
    return {"first_message_s": {name: figure["seconds"] for name, figure in mistakes.items()},
            "first_message_exit_codes": {name: figure["exit_code"] for name, figure in mistakes.items()},
            "first_message_last_lines": {name: figure["last_line"] for name, figure in mistakes.items()},
            "first_message_max_s": slowest, "first_message_bound_s": FIRST_MESSAGE_BOUND_S,
            "within_bound": slowest <= FIRST_MESSAGE_BOUND_S,
            "first_step_s": round(first_step, 3), "heavy_import_s": round(heavy_import_seconds(), 3),
            "repeats": repeats, "load_average_1min": round(load, 2), "cpus": os.cpu_count()}


def _first_step_marker_class() -> type:
    """The Lightning callback behind `FirstStepMarker`, built on first use so this module imports no Lightning."""
    from lightning.pytorch.callbacks import Callback

    class FirstStepMarker(Callback):
        """Writes `time.time()` to `path` when the first training batch starts."""

        def __init__(self, path: str) -> None:
            self.path, self.written = Path(path), False

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if not self.written:
                self.path.write_text(repr(time.time()))
                self.written = True

    FirstStepMarker.__module__ = __name__
    return FirstStepMarker


def __getattr__(name: str) -> Any:
    """`pneumo.bench.startup.FirstStepMarker` (as Hydra's `_target_` names it) builds the callback class."""
    if name == "FirstStepMarker":
        globals()[name] = _first_step_marker_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the figures as one JSON line; exit status 1 when a mistake took longer than the bound."""
    args = list(sys.argv[1:] if argv is None else argv)
    repeats = 3
    if args[:1] == ["--repeats"] and len(args) == 2 and args[1].isdigit() and int(args[1]) >= 1:
        repeats = int(args[1])
    elif args:
        print("usage: python -m pneumo.bench.startup [--repeats N]", file=sys.stderr)
        return 2
    result = run_startup_bench(repeats)
    print(json.dumps(result), flush=True)
    return 0 if result["within_bound"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
