"""Reading checkpoints written by train.py, with errors that say what is wrong and what to do."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded with weights_only=True: tensors and plain data only, no code runs."""
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
    return checkpoint


def load_weights(module: torch.nn.Module, checkpoint: dict[str, Any], path: str | Path) -> None:
    """Strict load: a checkpoint of another architecture fails here, naming the mismatched keys."""
    try:
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not fit the model its config describes: "
                              f"{str(error).splitlines()[0]} ...") from error
