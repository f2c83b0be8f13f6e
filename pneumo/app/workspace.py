"""The review page's one temporary folder: everything it writes goes there, and it is removed on the way out.

Uploads are written there for the moment they are read, a models:/ download lands there, and so does the
empty cache folder torch creates when Lightning is imported (`torchinductor_<user>` in the system's temp
folder otherwise): hence `TORCHINDUCTOR_CACHE_DIR` is pointed into it *before* torch is imported. The folder
is removed on Ctrl+C and on SIGTERM too: uvicorn re-raises the signal after its graceful shutdown, and the
default SIGTERM action would end the process without running any clean-up. Standard library only.
"""
from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = "pneumo-app-"


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)  # unwinds through the `with` below, which removes the folder


@contextmanager
def temporary_workspace() -> Iterator[Path]:
    """A new folder under the system's temp folder ($TMPDIR), removed when the block ends (also on SIGTERM).

    Sets TORCHINDUCTOR_CACHE_DIR inside it unless the user set one; call it before torch is imported.
    """
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        with tempfile.TemporaryDirectory(prefix=PREFIX) as folder:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(folder, "torchinductor"))
            yield Path(folder)
    finally:
        signal.signal(signal.SIGTERM, previous)
