"""A folder written once and marked complete: the built-in demo data sets.

The marker file records what the folder was written for (a format version and the parameters); an
"incomplete" file sits in the folder while it is being written. `ensure` writes into a temporary
sibling folder and renames it into place, so an interrupted write never leaves a half folder that
looks complete, and of two processes racing, the loser uses the winner's folder. A folder that is
neither ours nor empty (a real data set at that path) is never replaced.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class WrittenOnce:
    """The marker and incomplete-file names of one kind of folder, and what to call it in messages."""

    marker_name: str
    incomplete_name: str
    what: str

    def read_marker(self, root: Path) -> dict[str, Any] | None:
        try:
            data = json.loads((root / self.marker_name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def is_current(self, root: Path, marker: dict[str, Any]) -> bool:
        """Whether `root` is complete and was written with `marker`'s format version and parameters."""
        data = self.read_marker(root)
        if data is None or (root / self.incomplete_name).exists():
            return False
        return {key: data.get(key) for key in ("format_version", "params")} == marker

    def may_replace(self, root: Path) -> bool:
        """Missing, empty, or one of ours: never a real data set that happens to sit at `root`."""
        if not root.exists():
            return True
        if not root.is_dir():
            return False
        return (root / self.marker_name).exists() or (root / self.incomplete_name).exists() or not any(root.iterdir())

    def begin(self, root: Path) -> None:
        """Start writing into `root`, which must be absent or empty (no stale files mixed in)."""
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"refusing to write a {self.what} into non-empty {root}")
        root.mkdir(parents=True, exist_ok=True)
        (root / self.incomplete_name).touch()

    def finish(self, root: Path, marker: dict[str, Any]) -> None:
        """Mark `root` complete: the marker (with any extra facts), then the incomplete file goes."""
        (root / self.marker_name).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        (root / self.incomplete_name).unlink()

    def ensure(self, root: Path, marker: dict[str, Any], write: Callable[[Path], Any]) -> Path:
        """`root` holding the folder for `marker` (format version and params), written by `write(folder)`
        only when it is not there yet."""
        root = Path(root)
        if self.is_current(root, marker):
            return root
        if not self.may_replace(root):
            raise FileExistsError(f"{root} exists and is not a {self.what}; not overwriting it. "
                                  "Point cache_dir elsewhere or empty that folder")
        root.parent.mkdir(parents=True, exist_ok=True)
        token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = root.parent / f".{root.name}.tmp-{token}"
        try:
            write(tmp)
            for _ in range(5):
                if self.is_current(root, marker):  # someone else finished first: use theirs
                    return root
                if root.exists():
                    if not self.may_replace(root):
                        raise FileExistsError(f"{root} is not a {self.what}; not overwriting it")
                    old = root.parent / f".{root.name}.old-{token}"  # a stale one: move aside, then replace
                    try:
                        root.rename(old)
                    except FileNotFoundError:
                        pass  # another process moved it already
                    else:
                        shutil.rmtree(old, ignore_errors=True)
                try:
                    tmp.rename(root)
                    return root
                except OSError:
                    continue  # lost a race for the name; re-check who won
            raise RuntimeError(f"could not move the {self.what} into place at {root}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
