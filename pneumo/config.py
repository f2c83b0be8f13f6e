"""Hydra/OmegaConf glue: resolvers the YAML uses, and helpers to read the composed config."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


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


def unknown_key_message(config_name: str, overrides: list[str]) -> str | None:
    """A clear message for overrides of keys the composed config does not have, or None.

    Hydra says "Key 'max_epoch' is not in struct"; this says which key, the closest valid ones and
    how to add a key on purpose. Group choices (model=..., data=...) are left to Hydra, whose message
    already lists the available options.
    """
    import difflib

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # a syntax error: Hydra's own message is the right one
        return None
    groups = [o.input_line for o in parsed if o.key_or_group.split("/")[0] in _groups() and "." not in
              o.key_or_group and not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    keys = [o.key_or_group for o in parsed
            if not o.is_add() and not o.is_force_add() and not o.is_delete() and "." in o.key_or_group
            and not o.key_or_group.startswith("hydra.")]
    if not keys:
        return None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=groups)
    except Exception:  # e.g. an unknown group option: Hydra reports it with the choices
        return None
    finally:
        GlobalHydra.instance().clear()
    known = set(flatten(OmegaConf.to_container(cfg, resolve=False)))
    problems = []
    for key in keys:
        if key in known or any(k.startswith(key + ".") for k in known):
            continue
        parent = key.rsplit(".", 1)[0]
        siblings = sorted(k for k in known if k.rsplit(".", 1)[0] == parent)
        close = difflib.get_close_matches(key, sorted(known), n=2, cutoff=0.8)
        problems.append(f"unknown config key '{key}'" + (f": did you mean {' or '.join(close)}?" if close else ".")
                        + (f"\n  keys under {parent}: {', '.join(s.rsplit('.', 1)[1] for s in siblings)}"
                           if siblings else ""))
    if not problems:
        return None
    return "\n".join(problems) + f"\nTo add a new key on purpose, prefix it with '+' (+{keys[0]}=...)."


def _groups() -> set[str]:
    return {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}


def exit_on_unknown_keys(config_name: str) -> None:
    """Entry points call this before Hydra: a typo'd key ends the program with one clear message."""
    import sys

    message = unknown_key_message(config_name, [a for a in sys.argv[1:] if not a.startswith("-")])
    if message:
        print(f"Error: {message}", file=sys.stderr)
        raise SystemExit(2)
