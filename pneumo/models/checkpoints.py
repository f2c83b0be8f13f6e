"""Reading checkpoints written by train.py, with errors that say what is wrong and what to do."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


# Where the configs' `_target_`s pointed before the library moved into subpackages. A checkpoint stores
# the config it was trained with, so one written before the move names these; they are rewritten on load.
LEGACY_TARGETS = {
    "pneumo.models.SeedCNN": "pneumo.models.seed_cnn.SeedCNN",
    "pneumo.backbones.PretrainedClassifier": "pneumo.models.backbones.PretrainedClassifier",
    "pneumo.transforms.BatchAugment": "pneumo.training.augment.BatchAugment",
    "pneumo.module.PneumoniaClassifier": "pneumo.training.module.PneumoniaClassifier",
    "pneumo.sweep.SweepSummary": "pneumo.training.sweep.SweepSummary",
    "pneumo.callbacks.AugmentationGrid": "pneumo.training.callbacks.AugmentationGrid",
    "pneumo.callbacks.BestEpochFigures": "pneumo.training.callbacks.BestEpochFigures",
    "pneumo.callbacks.SaveOnInterrupt": "pneumo.training.callbacks.SaveOnInterrupt",
    "pneumo.data.ChestXrayDataModule": "pneumo.data.datamodule.ChestXrayDataModule",
    "pneumo.data_table.TableDataModule": "pneumo.data.table_datamodule.TableDataModule",
    "pneumo.tracking.mlflow_logger": "pneumo.tracking.logger.mlflow_logger",
}


def upgrade_targets(config: Any) -> Any:
    """A stored config (nested dicts and lists) with every legacy `_target_` replaced by today's path.

    Returns a new structure; values other than `_target_` strings are kept as they are.
    """
    if isinstance(config, dict):
        return {key: (LEGACY_TARGETS.get(value, value) if key == "_target_" and isinstance(value, str)
                      else upgrade_targets(value)) for key, value in config.items()}
    if isinstance(config, list):
        return [upgrade_targets(value) for value in config]
    return config


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded with weights_only=True: tensors and plain data only, no code runs.

    The stored training config has its `_target_`s brought up to date (see `LEGACY_TARGETS`), so
    checkpoints written before the library moved into subpackages still evaluate, resume and serve.

    Raises:
        CheckpointError: the file is missing, unreadable, or not a pneumo training checkpoint.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass ckpt=PATH to a .ckpt written by "
                              f"train.py (under outputs/<date>/<time>/checkpoints/, or the run's MLflow artifacts)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails in many ways (KeyError, EOFError, UnpicklingError, ...)
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated, or another kind of "
                              f"file): {str(error).splitlines()[0]}") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "pneumo" not in checkpoint:
        raise CheckpointError(f"{path} is a PyTorch file but not a pneumo training checkpoint (no 'state_dict' "
                              f"and 'pneumo' entries): use a .ckpt written by train.py")
    if isinstance(checkpoint["pneumo"], dict) and "config" in checkpoint["pneumo"]:
        checkpoint["pneumo"]["config"] = upgrade_targets(checkpoint["pneumo"]["config"])
    return checkpoint


def load_weights(module: torch.nn.Module, checkpoint: dict[str, Any], path: str | Path) -> None:
    """Strict load: a checkpoint of another architecture fails here, naming the mismatched keys."""
    try:
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not fit the model its config describes: "
                              f"{str(error).splitlines()[0]} ...") from error


# What evaluation and serving need from a checkpoint; the optimiser state and Lightning's loops (resume only)
# are what makes a full one three times larger for the seed CNN.
_WEIGHTS_KEYS = ("state_dict", "pneumo", "epoch", "global_step", "pytorch-lightning_version")


def weights_only_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The weights and pneumo's metadata (config, threshold, validation figures) of a training checkpoint,
    without the optimiser state and loop progress: evaluates and serves, cannot resume."""
    return {key: checkpoint[key] for key in _WEIGHTS_KEYS if key in checkpoint}


def newest_checkpoint(project_root: Path, names: tuple[str, ...] = ("last.ckpt", "interrupted.ckpt"),
                      pattern: str = "*.ckpt") -> Path:
    """The most recently written checkpoint under `project_root`/outputs and /multirun whose file name is
    in `names` (or, with names=(), any file matching `pattern`): how `resume=last` and `ckpt=best|last`
    find "the run I just did".

    Raises:
        FileNotFoundError: no such checkpoint, naming the folders searched and the explicit alternative.
    """
    return max(_run_checkpoints(project_root, names, pattern), key=lambda p: p.stat().st_mtime)


def _run_checkpoints(project_root: Path, names: tuple[str, ...], pattern: str) -> list[Path]:
    """Every checkpoint under `project_root`/outputs and /multirun matching `pattern` (and, unless names is
    empty, named one of `names`). Raises FileNotFoundError naming the folders when there is none."""
    folders = [project_root / "outputs", project_root / "multirun"]
    found = [p for folder in folders for p in folder.glob(f"**/checkpoints/{pattern}")
             if not names or p.name in names]
    if not found:
        wanted = " or ".join(names) if names else pattern
        raise FileNotFoundError(f"found no {wanted} under {folders[0]} or {folders[1]}: train first, or pass "
                                f"the checkpoint's path")
    return found


def _run_started(checkpoints: Path) -> float:
    """When the run holding the `checkpoints` folder (…/RUN/checkpoints) started: Hydra writes RUN/.hydra/
    first; without it, the folder's own time."""
    marker = checkpoints.parent / ".hydra" / "config.yaml"
    return (marker if marker.exists() else checkpoints).stat().st_mtime


def resolve_checkpoint_path(value: str, project_root: Path) -> Path:
    """`ckpt=` as evaluate.py takes it: a path, or `best` / `last`: the best-epoch checkpoint / last.ckpt of
    the most recently started run under outputs/ and multirun/ that has one (so `best` and `last` name the
    same run, and a long run that improves late does not win over the run you just started).

    Raises:
        FileNotFoundError: `best`/`last` and no run has such a checkpoint (names the folders searched).
    """
    if value not in ("best", "last"):
        return Path(value).expanduser()
    pattern, names = ("best-epoch*.ckpt", ()) if value == "best" else ("*.ckpt", ("last.ckpt",))
    found = _run_checkpoints(project_root, names, pattern)
    run = max({p.parent for p in found}, key=_run_started)
    return max((p for p in found if p.parent == run), key=lambda p: p.stat().st_mtime)
