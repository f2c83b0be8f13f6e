"""Hydra/OmegaConf glue: resolvers the YAML uses, and helpers to read the composed config.

The command line itself is checked in `pneumo.command_line`, against `pneumo.config_schema`.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from pneumo.paths import CONFIG_DIR, PROJECT_ROOT  # noqa: F401  (CONFIG_DIR: re-exported for the entry points)


def register_resolvers() -> None:
    """`${project_root:}` anchors the MLflow store, data and caches to the project, not to the CWD."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: PROJECT_ROOT.as_posix())


def flatten(config: DictConfig | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the same dotted keys a Hydra override uses."""
    container = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config
    flat: dict[str, Any] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


register_resolvers()
