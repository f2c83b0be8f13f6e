"""Optuna's views of a study as PNG files (matplotlib; plotly is not a dependency).

`optimization_history.png` (the objective per trial and the best so far), `param_importances.png`
(fANOVA importance of each searched key for the objective) and `parallel_coordinate.png` (every complete
trial as a line through its values and objective). A plot the study cannot give yet (importances need
two complete trials with differing values) is skipped with a log line, never an error.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")


def study_plots(study, folder: Path) -> list[Path]:
    """Write the PLOTS of `study` into `folder` (created); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as views

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = getattr(views, f"plot_{name}")(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            log.info("no %s plot yet: %s", name, error)
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
        figure.tight_layout()
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written
