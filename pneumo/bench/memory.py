"""Memory peaks that ``ru_maxrss`` cannot tell apart, sampled from Linux /proc in a thread: this process's
anonymous memory (the memory-mapped cache aside) and its children's private memory, per phase.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any


class MemorySampler:
    """Peaks that ru_maxrss cannot tell apart, sampled in a thread every `interval` seconds (Linux /proc).

    `anon_mb`: this process's anonymous memory (RssAnon: its own allocations, without the pages of
    the memory-mapped cache it has read or written, which the kernel can drop at will).
    `children_private_mb`: the largest private memory (Private_Clean + Private_Dirty) of any child
    process (decode pool, DataLoader workers), without the pages a forked child shares with this one.
    Both are kept per phase (`enter`), so the writer's pool is not taken for the decoders. A pool that
    lives less than the interval may go unseen.
    Where /proc is missing the peaks stay None.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.phase = interval, "start"
        self.anon_mb: dict[str, float] = {}
        self.children_private_mb: dict[str, float] = {}
        self._lock = threading.Lock()  # the thread and `enter` both sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def enter(self, phase: str) -> None:
        """Start a phase, with a sample at the end of the last one and at the start of this one: a phase
        shorter than the interval still has a reading."""
        self.sample()
        with self._lock:
            self.phase = phase
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """One reading of both, kept under the current phase."""
        anon = _status_kb(Path("/proc/self/status"), "RssAnon")
        children = [kb for pid in _child_pids() if (kb := _private_kb(pid)) is not None]
        with self._lock:
            phase = self.phase
            if anon is not None:
                self.anon_mb[phase] = max(self.anon_mb.get(phase, 0.0), anon / 1024)
            if children:
                self.children_private_mb[phase] = max(self.children_private_mb.get(phase, 0.0),
                                                      max(children) / 1024)

    def peak(self, which: dict[str, float], *phases: str) -> float | None:
        """The largest reading of `which` (`anon_mb` or `children_private_mb`) in `phases` (all when none
        is named), in MB to 0.1; None when there is none."""
        values = [which[p] for p in (phases or tuple(which)) if p in which]
        return round(max(values), 1) if values else None


def _status_kb(path: Path, field: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _child_pids() -> list[int]:
    """Direct children of this process, from /proc/<pid>/stat (the ppid is the 2nd field after the name)."""
    me, found = os.getpid(), []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = Path(f"/proc/{entry.name}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                        found.append(int(entry.name))
    return found


def _private_kb(pid: int) -> int | None:
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    clean, dirty = _status_kb(rollup, "Private_Clean"), _status_kb(rollup, "Private_Dirty")
    return None if clean is None or dirty is None else clean + dirty
