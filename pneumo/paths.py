"""Where the project is: its root folder and the Hydra config folder.

Standard library only, so that code which must not import OmegaConf or Hydra (the benchmarks) finds the
same folders as `pneumo.config` and the entry points.
"""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"
