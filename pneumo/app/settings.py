"""The review page's config, conf/app.yaml, as Hydra composes it: from Hydra's config store.

`python -m pneumo.app model=PATH` must treat `model` as a plain key (a checkpoint, an ONNX file or a
`models:/` URI), but conf/ also holds train.py's `model/` group, and Hydra reads `model=...` as a choice
in that group whenever the primary config folder has one ("Could not override 'model'. No match in the
defaults list"). So the app composes from the config store only, where the YAML is registered under
`CONFIG_NAME`, with no conf/ groups in sight. Imports Hydra and OmegaConf only.
"""
from __future__ import annotations

from omegaconf import OmegaConf

from pneumo.config import CONFIG_DIR

CONFIG_NAME = "app"
CONFIG_FILE = CONFIG_DIR / "app.yaml"


def register_config() -> str:
    """Put conf/app.yaml into Hydra's ConfigStore (idempotent); returns the config name to compose.

    Raises:
        FileNotFoundError: conf/app.yaml is missing (a broken checkout).
    """
    from hydra.core.config_store import ConfigStore

    if not CONFIG_FILE.is_file():
        raise FileNotFoundError(f"{CONFIG_FILE} is missing: restore it from the repository (git checkout conf/app.yaml)")
    ConfigStore.instance().store(name=CONFIG_NAME, node=OmegaConf.load(CONFIG_FILE))
    return CONFIG_NAME

