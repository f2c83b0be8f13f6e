"""The command line of train.py and evaluate.py, checked before Hydra runs the app (and before torch).

`exit_on_mistakes` composes the config with the command line's overrides (Hydra's compose API, the same
composition `@hydra.main` does next) and ends the program with one message and exit status 2 when
something is wrong: an unknown key (with the close valid ones), a value the key may not hold
(`pneumo.config_schema.SCHEMA`), a mandatory value left unset, an unknown group option (with the
options), a path that does not exist, an override Hydra cannot parse, or several values without `-m`.
Nothing has been written then: no run folder, no MLflow run. Multirun sweeps are checked value by value;
`hydra.*` overrides are passed on as they are, `+key=` additions are not type-checked. Imports Hydra and
OmegaConf only.
"""
from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from pneumo.config import CONFIG_DIR, flatten
from pneumo.data.attributes import subgroups_problem
from pneumo.config_schema import (
    PATHS,
    SCHEMA,
    SWEEPER,
    missing_problem,
    runtime_problem,
    path_problem,
    value_problem,
)

# Hydra flags after which nothing runs, or whose config is not conf/'s: Hydra answers them itself.
_HYDRA_ANSWERS = ("help", "hydra_help", "info", "shell_completion", "experimental_rerun", "config_path", "config_dir")
_ABSENT = object()
Composer = Callable[[str, list], DictConfig]


@contextmanager
def composer(config_dir: Path | None = CONFIG_DIR) -> Iterator[Composer]:
    """Hydra's compose API over conf/: yields compose(config_name, overrides) -> config with its hydra node.

    `config_dir=None` composes from Hydra's config store alone (the review page's config, registered by
    `pneumo.app.settings`, whose `model` key would read as conf/'s model group)."""
    from hydra import compose, initialize, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with (initialize_config_dir(config_dir=str(config_dir), version_base="1.3") if config_dir is not None
              else initialize(version_base="1.3", config_path=None)):
            yield lambda name, overrides: compose(config_name=name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()  # @hydra.main initialises its own


def exit_on_mistakes(config_name: str, argv: Sequence[str] | None = None, config_dir: Path | None = CONFIG_DIR) -> None:
    """Entry points call this first: a mistaken command line ends the program with one message, exit code 2.
    `config_dir`: as in `composer`."""
    try:
        message = command_line_problem(config_name, sys.argv[1:] if argv is None else argv, config_dir)
    except Exception as error:  # a case this check does not know: Hydra, which composes next, reports it in full
        print(f"(the command-line check was skipped: {type(error).__name__}: {error})", file=sys.stderr)
        return
    if message:
        print(f"Error: {message}", file=sys.stderr)
        raise SystemExit(2)


def command_line_problem(config_name: str, argv: Sequence[str], config_dir: Path | None = CONFIG_DIR) -> str | None:
    """The message for what is wrong with `argv` (the arguments after the script), or None."""
    from hydra._internal.utils import (
        get_args_parser,  # Hydra's own flags (-m, -c, -cn, ...): the same parse
    )
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    args = get_args_parser().parse_args(list(argv))  # a bad flag: argparse's usage message, exit code 2
    if any(getattr(args, flag, None) for flag in _HYDRA_ANSWERS):
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except OverrideParseException as error:
        return _compact(error)
    values = [_concrete(override) for override in parsed]
    base = [lines[0] for lines in values if lines]
    multirun = args.multirun or any(line.replace(" ", "") == "hydra.mode=MULTIRUN" for line in base)
    with composer(config_dir) as compose:
        problem = _check(compose, args.config_name or config_name, parsed, values, base, multirun)
        for index, override in enumerate(parsed):  # each further option of a swept group: its own composition
            for line in values[index][1:] if _is_group(override) else []:
                variant = [line if j == index else lines[0] for j, lines in enumerate(values) if lines]
                problem = problem or _check(compose, args.config_name or config_name, parsed, values, variant, True)
    return problem


def unknown_key_message(config_name: str, overrides: list[str]) -> str | None:
    """A clear message for overrides of keys the composed config does not have, or None.

    Hydra says "Could not override 'trainer.max_epoch'"; this names the key, the closest valid ones, the
    keys beside it and how to add a key on purpose. Unknown group options are `command_line_problem`'s.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # a syntax error: command_line_problem reports it
        return None
    with composer() as compose:
        return _unknown_keys(compose, config_name, parsed)


def _check(compose: Composer, config_name: str, parsed: list, values: list[list[str]], lines: list[str],
           multirun: bool) -> str | None:
    """Every problem of one composition: `lines` holds one value per override."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        cfg = compose(config_name, lines)
    except MissingConfigException as error:
        return _option_message(error)
    except ConfigCompositionException as error:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        return _unknown_keys(compose, config_name, OverridesParser.create().parse_overrides(lines)) or _compact(error)
    multirun = multirun or str(cfg.hydra.mode) == "RunMode.MULTIRUN"  # hparams_search=optuna sets it
    # The few hydra.* keys checked (the Optuna sweeper's), while the hydra node is there.
    sweeper = [value_problem(key, value) for key in SWEEPER if (value := _select(cfg, key)) is not _ABSENT]
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]  # its sweep folder and job number exist only once Hydra runs
    swept = [override for override in parsed if override.is_sweep_override()]
    if swept and not multirun:
        key = swept[0].key_or_group
        return (f"{swept[0].input_line} gives several values, which only a sweep runs: add -m "
                f"(python {config_name}.py -m ...) for one run per value, write a list as {key}=[a,b], "
                f"or quote a string: {key}='a,b'")
    problems = (sweeper + _value_problems(cfg, parsed, values, config_name)
                + [_subgroups_problem(cfg, parsed), _runtime_problem(cfg)])
    return "\n".join(dict.fromkeys(problem for problem in problems if problem)) or None


def _subgroups_problem(cfg: DictConfig, parsed: list) -> str | None:
    """evaluate.py's subgroups=[...] on data named on the command line, which the data set cannot give (a
    Kaggle folder has no sex, age or view). Without data= the checkpoint's data config is evaluated, which
    only the run reads (evaluate.py then says the same, before reading any image)."""
    subgroups = _select(cfg, "subgroups")
    named = any(o.input_line.lstrip("+~").startswith("data") for o in parsed if not o.is_hydra_override())
    if not named or subgroups in (_ABSENT, None, []) or value_problem("subgroups", subgroups):
        return None
    data = {key: value for key in ("attributes", "name", "csv", "root")
            if (value := _select(cfg, f"data.{key}")) is not _ABSENT}
    return subgroups_problem([subgroups] if isinstance(subgroups, str) else subgroups, data)


def _runtime_problem(cfg: DictConfig) -> str | None:
    """predict_dir's runtime= against the model file and gradcam.on_predict (`config_schema.runtime_problem`)."""
    runtime, predict_dir = _select(cfg, "runtime"), _select(cfg, "predict_dir")
    if runtime is _ABSENT or predict_dir in (_ABSENT, None, "???"):
        return None
    ckpt = _select(cfg, "ckpt")
    return runtime_problem(runtime, "" if ckpt in (_ABSENT, None, "???") else str(ckpt),
                           _select(cfg, "gradcam.on_predict") is True and _select(cfg, "gradcam.n") != 0)


def _value_problems(cfg: DictConfig, parsed: list, values: list[list[str]],
                    config_name: str | None = None) -> list[str | None]:
    """Mandatory values left unset, values the schema refuses (the composed ones, then each further value
    of a swept key) and paths named on the command line that do not exist."""
    missing = {key for key, value in flatten(OmegaConf.to_container(cfg, resolve=False)).items() if value == "???"}
    problems = [missing_problem(key, config_name) for key in sorted(missing)]
    app = [override for override in parsed if not override.is_hydra_override()]
    added = tuple(override.key_or_group for override in app if override.is_add())
    named = {override.key_or_group for override in app if not override.is_delete()}
    for key in sorted(SCHEMA, key=lambda key: key not in named):  # the keys the user set first
        value = _ABSENT if key in missing or _under(key, added) else _select(cfg, key)  # additions: unchecked
        problems.append(None if value is _ABSENT else value_problem(key, value))
    for key in PATHS:
        if key in named and key not in missing and not _written_by(cfg, key):
            problems.append(path_problem(key, _select(cfg, key)))
    for override, options in zip(parsed, values):
        if override.is_hydra_override() or override.is_add() or _is_group(override):
            continue
        for line in options[1:]:
            value = _value_of(line)
            if not (isinstance(value, str) and "${" in value):
                problems.append(value_problem(override.key_or_group, value))
                if override.key_or_group in PATHS and not _written_by(cfg, override.key_or_group):
                    problems.append(path_problem(override.key_or_group, value))
    return problems


def _unknown_keys(compose: Composer, config_name: str, parsed: list) -> str | None:
    """Overrides (plain or `~`) of keys that the config composed from the group choices alone lacks."""
    groups = [o.input_line for o in parsed if _is_group(o) and not o.is_sweep_override()]
    keys = [o for o in parsed if not o.is_hydra_override() and not _is_group(o) and not o.is_add()
            and not o.is_force_add()]
    if not keys:
        return None
    try:
        cfg = compose(config_name, groups)
    except Exception:  # e.g. an unknown group option: reported as such
        return None
    known = {key for key in flatten(OmegaConf.to_container(cfg, resolve=False)) if not key.startswith("hydra.")}
    nodes = {".".join(key.split(".")[:depth]) for key in known for depth in range(1, key.count(".") + 2)}
    problems, hint = [], None
    for override in keys:
        key = override.key_or_group
        if key in nodes:
            continue
        parent = key.rsplit(".", 1)[0] if "." in key else None
        siblings = sorted({k.split(".")[key.count(".")] for k in nodes if parent and k.startswith(parent + ".")})
        close = difflib.get_close_matches(key, sorted(nodes), n=2, cutoff=0.8)
        problems.append(f"unknown config key '{key}'" + (f": did you mean {' or '.join(close)}?" if close else ".")
                        + (f"\n  keys under {parent}: {', '.join(siblings)}" if siblings else ""))
        hint = hint or (None if override.is_delete() else key)
    if not problems:
        return None
    return "\n".join(problems) + (f"\nTo add a new key on purpose, prefix it with '+' (+{hint}=...)." if hint else "")


def _concrete(override: Any) -> list[str]:
    """The override as single-valued command-line items: one per value of a sweep (both ends of an
    interval), none for a glob (Hydra expands it against the options itself)."""
    if not override.is_sweep_override():
        return [override.input_line]
    key = override.get_key_element()
    if override.is_interval_sweep():
        sweep = override.value()
        return [f"{key}={sweep.start}", f"{key}={sweep.end}"]
    try:
        return [f"{key}={value}" for value in override.sweep_string_iterator()]
    except Exception:  # a glob: enumerable only by Hydra's config loader
        return []


def _value_of(line: str) -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(line).value()


def _is_group(override: Any) -> bool:
    """A config group choice (model=resnet18, hydra/launcher=slurm, ~logger), not a key."""
    key = override.key_or_group
    return override.package is not None or "/" in key or ("." not in key and (CONFIG_DIR / key).is_dir())


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def _select(cfg: DictConfig, key: str) -> Any:
    """The resolved value at `key`, plain Python; _ABSENT when there is none or it cannot be resolved here."""
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    except Exception:  # an interpolation that only resolves inside the running app
        return _ABSENT
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _written_by(cfg: DictConfig, key: str) -> bool:
    """Whether the config writes `key`'s path itself (a demo set), so it need not exist yet."""
    return any(_select(cfg, other) not in (None, _ABSENT) for other in PATHS[key].written_by)


def _option_message(error: Any) -> str:
    """Hydra's "Could not find 'model/resnet_typo'" and its option list, as one line."""
    group, _, option = (error.missing_cfg_file or "").rpartition("/")
    options = list(error.options or [])
    if not group or not options:
        return _compact(error)
    close = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
    return (f"unknown option {group}={option}: {group} is one of {', '.join(options)}. Fix: {group}="
            f"{close[0] if close else options[0]}")


def _compact(error: Exception) -> str:
    """Hydra's message without its config search path, on as few lines as it reads well."""
    text = str(error).split("Config search path:")[0].strip()
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
