"""The machine a bench runs on: device and precision chosen, the device described, memory and load read.

What both benches report about where they ran, apart from the speeds themselves.
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
from pathlib import Path

import torch


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the JSON result alone)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def resolve_device(name: str) -> torch.device:
    """'auto': CUDA when there is a GPU, else the CPU; SystemExit for 'cuda' on a machine without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto': 32-true on the CPU; bf16-mixed on a GPU that has bf16, else 16-mixed."""
    if name != "auto":
        return name
    if device.type != "cuda":
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def describe_device(device: torch.device) -> str:
    """The GPU's name and CUDA version, or the CPU model with its logical CPUs and torch's threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"


def decode_pool_workers(n_files: int) -> int:
    """Processes `pneumo.data.cache.decode_all` uses for `n_files` when the DataModule calls it (no `workers`):
    the DataModule decodes the whole train/ folder in one call."""
    return 1 if n_files < 64 else (os.cpu_count() or 1)


def peak_rss_mb(who: int) -> float:
    """Peak resident set in MB of this process (`resource.RUSAGE_SELF`) or of its largest child
    (`resource.RUSAGE_CHILDREN`)."""
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(who).ru_maxrss * scale / 2 ** 20


def current_rss_mb() -> float | None:
    """This process's resident set now (Linux); None where /proc is missing."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def load_average() -> float | None:
    """1-minute load average: how busy the (shared) machine was, other users included."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
