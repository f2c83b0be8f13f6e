"""What pruning buys: the same Optuna search on the demo set with and without a pruner.

    python -m pneumo.bench.search [--trials 8] [--epochs 4] [--n-train 400] [--pruners median,none]

Each pruner runs `train.py hparams_search=optuna` (same seed, search space, trial budget and data) in a
fresh temporary folder (its own MLflow store, study and caches; the demo set is written once there) and
the bench prints, per pruner: wall time (s, the whole command including start-up), trials complete and
pruned, epochs trained in all, and the best val/auroc; then one JSON line with the same figures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pneumo.paths import PROJECT_ROOT

STUDY = "pneumo-optuna"  # conf/hparams_search/optuna.yaml


def search_command(folder: Path, pruner: str, trials: int, epochs: int, n_train: int, image_size: int,
                   seed: int) -> list[str]:
    """The train.py command line of one search, everything kept under `folder`."""
    return [sys.executable, str(PROJECT_ROOT / "train.py"), "hparams_search=optuna", f"hydra.sweeper.pruner={pruner}",
            f"hydra.sweeper.n_trials={trials}", f"seed={seed}", "data=synthetic", f"data.synthetic.n_train={n_train}",
            "data.synthetic.n_test=40", "data.synthetic.min_side=512", "data.synthetic.max_side=640",
            f"data.image_size={image_size}", f"trainer.max_epochs={epochs}", "mlflow_model=false",
            f"cache_dir={folder}/cache", f"logger.tracking_uri=sqlite:///{folder}/mlruns/mlflow.db",
            f"logger.artifact_location=file://{folder}/mlruns/artifacts", f"hydra.sweep.dir={folder}/multirun"]


def measure(pruner: str, trials: int, epochs: int, n_train: int, image_size: int, seed: int) -> dict[str, Any]:
    """One search; its figures. Raises RuntimeError with the end of its stderr when train.py fails."""
    import optuna

    with tempfile.TemporaryDirectory(prefix=f"bench-search-{pruner}-") as folder:
        command = search_command(Path(folder), pruner, trials, epochs, n_train, image_size, seed)
        start = time.perf_counter()
        result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"pruner={pruner}: train.py failed:\n{result.stderr[-3000:]}")
        study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder}/mlruns/optuna.db")
        done = study.get_trials()
        complete = [t for t in done if t.state.name == "COMPLETE"]
        return {"pruner": pruner, "wall_s": round(wall, 1), "complete": len(complete),
                "pruned": sum(t.state.name == "PRUNED" for t in done),
                "epochs": sum(len(t.intermediate_values) for t in done),
                "best_val_auroc": round(max(t.value for t in complete), 4) if complete else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pneumo.bench.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="trial budget (finished trials) per search")
    parser.add_argument("--epochs", type=int, default=4, help="trainer.max_epochs of each trial")
    parser.add_argument("--n-train", type=int, default=400, help="demo train images (written once per search)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--pruners", default="median,none", help="comma-separated: median, hyperband, none")
    args = parser.parse_args(argv)
    rows = []
    for pruner in args.pruners.split(","):
        print(f"searching with pruner={pruner} ...", file=sys.stderr, flush=True)
        rows.append(measure(pruner, args.trials, args.epochs, args.n_train, args.image_size, args.seed))
    print(f"\n{args.trials} trials x up to {args.epochs} epochs, {args.n_train} demo images at "
          f"{args.image_size} px, seed {args.seed}")
    print("| pruner | wall time (s) | complete | pruned | epochs trained | best val/auroc |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['pruner']} | {row['wall_s']} | {row['complete']} | {row['pruned']} | {row['epochs']} | "
              f"{row['best_val_auroc']} |")
    print(json.dumps({"trials": args.trials, "epochs": args.epochs, "n_train": args.n_train, "results": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
