"""What the keys users set may hold: the one table the command-line check reads (`pneumo.command_line`).

`SCHEMA` maps a dotted key of the composed train or evaluate config to a `Rule`: what it allows, in words,
a valid example (the fix the message proposes) and the test. The ranges repeat the code's own checks
(the ValueErrors of pneumo.data, pneumo.training, pneumo.evaluation and Lightning's Trainer), so that a
wrong value is reported in a second, before torch is imported, rather than after the data has loaded.
`PATHS` lists the paths a command line may name that must exist, and `MISSING` the words for a
mandatory value (`???`) left unset. Standard library only.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumo.data.attributes import SUBGROUPS  # standard library only, like this module


@dataclass(frozen=True)
class Rule:
    """A key's allowed values: `allowed` in words, `example` a valid value, `test` True when `value` fits."""

    allowed: str
    example: str
    test: Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(minimum: int, example: int, maximum: int | None = None, nullable: bool = False) -> Rule:
    """An integer >= minimum (and <= maximum), optionally null."""
    words = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    return Rule(words + (", or null" if nullable else ""), str(example),
                lambda v: (nullable and v is None) or
                          (_is_int(v) and v >= minimum and (maximum is None or v <= maximum)))


def number(low: float, example: float, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Rule:
    """A finite number in the interval from low to high (each end open or closed)."""
    if high is None:
        words = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        words = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def test(v: Any) -> bool:
        return (_is_number(v) and (v > low if low_open else v >= low)
                and (high is None or (v < high if high_open else v <= high)))
    return Rule(words, f"{example:g}", test)


def choice(*options: Any) -> Rule:
    """One of `options` (compared with ==, so 16 and "16" differ as YAML and Hydra make them differ)."""
    shown = [_show(option) for option in options]
    return Rule(f"one of {', '.join(dict.fromkeys(shown))}", shown[0],
                lambda v: any(v == option and type(v) is type(option) for option in options))


def nullable(rule: Rule, example: str = "null") -> Rule:
    """`rule`'s values or null."""
    return Rule(f"{rule.allowed}, or null", example, lambda v: v is None or rule.test(v))


def either(first: Rule, second: Rule, example: str | None = None) -> Rule:
    """A value that fits `first` or `second`."""
    return Rule(f"{first.allowed}, or {second.allowed}", example or first.example,
                lambda v: first.test(v) or second.test(v))


def _show(value: Any) -> str:
    """A value as the command line writes it: null, true, 0.5, abc."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else "''"


def _devices(value: Any) -> bool:
    if isinstance(value, str):
        return value == "auto" or all(part.strip().isdigit() for part in value.split(",")) or value == "-1"
    if isinstance(value, list):
        return bool(value) and all(_is_int(v) and v >= 0 for v in value)
    return _is_int(value) and (value >= 1 or value == -1)


BOOLEAN = choice(True, False)
# Lightning 2's precision names and their aliases (lightning.fabric.plugins.precision.precision).
PRECISION = choice("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine",
                   "transformer-engine-float16", "64", "32", "16", "bf16", 64, 32, 16)
ACCELERATOR = choice("auto", "cpu", "gpu", "cuda", "mps", "tpu")
BATCHES = either(number(0, 1.0, 1), integer(0, 10), example="1.0")  # a fraction of the batches, or a count
FRACTION = number(0, 0.1, 1, low_open=True, high_open=True)
IMAGE_SIZE = integer(8, 128)
# evaluate.py's subgroups=[sex,age_band,view]: a list of known subgroupings (or one of them alone).
SUBGROUP_LIST = Rule(f"a list of the subgroupings {', '.join(SUBGROUPS)} (or [] for none)",
                     f"[{','.join(SUBGROUPS)}]", lambda v: (isinstance(v, str) and v in SUBGROUPS) or (
                         isinstance(v, list) and all(isinstance(x, str) and x in SUBGROUPS for x in v)))
# A registered model's name as a models:/NAME URI can carry it: no '/', '@' or ':' and not blank.
REGISTERED_NAME = Rule("a name without '/', '@' or ':'", "pneumo",
                       lambda v: isinstance(v, str) and v.strip() != "" and not set(v) & set("/@:"))

SCHEMA: dict[str, Rule] = {
    # train.yaml
    "seed": integer(0, 42, maximum=2**32 - 1),
    "mlflow_model": BOOLEAN,
    "registry.register": BOOLEAN,
    "registry.name": REGISTERED_NAME,
    "calibration": choice("temperature", "none"),
    "tracking.log_checkpoints": choice("best", "all", "none"),
    "module.threshold_policy": choice("sensitivity", "fixed", "youden"),
    "module.target_sensitivity": number(0, 0.95, 1, low_open=True),
    # trainer/
    "trainer.max_epochs": Rule("an integer >= 1, or -1 (until stopped)", "3",
                               lambda v: _is_int(v) and (v >= 1 or v == -1)),
    "trainer.devices": Rule("an integer >= 1, -1 (all), auto, a list of device indices such as [0,1], "
                            "or a string such as '0,1'", "1", _devices),
    "trainer.accelerator": ACCELERATOR,
    "trainer.precision": PRECISION,
    "trainer.deterministic": choice(False, True, "warn"),
    "trainer.log_every_n_steps": integer(1, 10),
    "trainer.num_sanity_val_steps": integer(-1, 0),
    "trainer.limit_train_batches": BATCHES,
    "trainer.limit_val_batches": BATCHES,
    "trainer.limit_test_batches": BATCHES,
    "trainer.limit_predict_batches": BATCHES,
    "trainer.overfit_batches": either(number(0, 0.0, 1), integer(0, 1), example="0.0"),
    "trainer.fast_dev_run": either(BOOLEAN, integer(0, 5), example="false"),
    "trainer.accumulate_grad_batches": integer(1, 1),
    "trainer.gradient_clip_val": nullable(number(0, 1.0)),
    "trainer.gradient_clip_algorithm": choice(None, "norm", "value"),
    "trainer.val_check_interval": nullable(either(number(0, 0.5, 1, low_open=True), integer(1, 100))),
    "trainer.check_val_every_n_epoch": integer(1, 1, nullable=True),
    # data/ (the data module's settings and the table sources')
    "data.batch_size": integer(1, 32),
    "data.image_size": IMAGE_SIZE,
    "data.channels": choice(1, 3),
    "data.num_workers": either(choice("auto"), integer(0, 2), example="auto"),
    "data.pin_memory": choice("auto", True, False),
    "data.val_fraction": FRACTION,
    "data.n_folds": integer(2, 5, nullable=True),  # k-fold cross-validation (fold < n_folds: the data module)
    "data.fold": integer(0, 0),
    "data.test_fraction": number(0, 0.2, 1, low_open=True, high_open=True),
    "data.balance": choice("none", "pos_weight", "sampler"),
    "data.cache": choice("disk", "memory", "none"),
    "data.on_bad_file": choice("skip", "error"),
    "data.val_strategy": choice("patient", "folder"),
    "data.evaluate_split": choice("test", "all"),
    "data.dicom.voi": choice("auto", "none"),
    "data.label.rule": choice("column", "findings"),
    "data.label.other": choice("exclude", "negative"),
    "data.attributes.from": choice("table", "dicom"),
    # optim/, augment/, model/
    "optim.lr": number(0, 0.001, low_open=True),
    "optim.weight_decay": number(0, 0.0),
    "augment.strength": number(0, 1.0),
    "augment.mixup_alpha": number(0, 0.0),
    "augment.mix_mode": choice("mixup", "cutmix"),
    "model.image_size": IMAGE_SIZE,
    "model.net.dropout": number(0, 0.3, 1, high_open=True),
    "model.freeze_epochs": integer(0, 0),
    "model.backbone_lr_scale": number(0, 1.0, low_open=True),
    "model.pretrained": BOOLEAN,
    "model.channels_last": BOOLEAN,
    "logger.on_unreachable": choice("error", "local"),
    # evaluate.yaml
    "batch_size": integer(1, 64),
    "gallery_size": integer(0, 16),
    "gradcam.n": integer(0, 8),
    "gradcam.on_predict": BOOLEAN,
    "bootstrap.resamples": integer(1, 1000),
    "bootstrap.seed": integer(0, 0, maximum=2**32 - 1),
    "subgroups": SUBGROUP_LIST,
    "subgroup_min_size": integer(1, 30),
    "subgroup_min_class": integer(1, 10),
    "precision": PRECISION,
    "accelerator": ACCELERATOR,
    # predict_dir (evaluate.yaml) and predict.yaml; export.yaml
    "runtime": choice("auto", "torch", "onnx"),
    "workers": either(choice("auto"), integer(0, 2), example="auto"),
    "onnx_threads": integer(0, 0),
    "format": choice("onnx"),
    "log_to_mlflow": BOOLEAN,
    "tracking_uri": Rule("an MLflow tracking URI (sqlite:///PATH/mlflow.db, http://HOST:PORT, ...), or null",
                         "sqlite:///mlruns/mlflow.db",
                         lambda v: v is None or (isinstance(v, str) and bool(re.match(r"^[a-z][a-z0-9+.-]*:", v)))),
    # promote.yaml
    "name": REGISTERED_NAME,
    "version": integer(1, 1),
    "alias": REGISTERED_NAME,
    "rule": choice("point", "interval"),
    "margin": number(0, 0.0, 1),
    "force": BOOLEAN,
    # audit.yaml
    "audit.fail_on": choice("none", "leak"),
    "audit.image_size": IMAGE_SIZE,
    "audit.hash_size": integer(2, 16),
    "audit.near_max_distance": integer(0, 24, maximum=256),
    "audit.samples_per_class": integer(0, 16),
    # app.yaml (python -m pneumo.app; its `model` is a path or URI: PATHS)
    "host": Rule("a host name or IP address to listen on (127.0.0.1: this machine only)", "127.0.0.1",
                 lambda v: isinstance(v, str) and v != "" and not any(c.isspace() or c in "/@" for c in v)),
    "port": integer(1, 8050, maximum=65535),
    "max_upload_mb": number(0, 20, low_open=True),
    "display_size": integer(64, 384, maximum=4096),
}


# The Optuna sweeper's keys (hydra/sweeper=pneumo_optuna, set by hparams_search=optuna): the only hydra.*
# keys checked; apart from SCHEMA because they exist only in a search's composed config.
SWEEPER: dict[str, Rule] = {
    "hydra.sweeper.pruner": choice("median", "hyperband", "none"),
    "hydra.sweeper.direction": choice("maximize", "minimize"),
    "hydra.sweeper.n_trials": integer(1, 20),
    "hydra.sweeper.heartbeat_interval": integer(1, 10),
    "hydra.sweeper.grace_period": integer(1, 30),
    "hydra.sweeper.max_failures_in_a_row": integer(1, 3),
}


@dataclass(frozen=True)
class PathRule:
    """A path named on the command line that must exist: a `kind` ('file' or 'folder'), the words for it,
    values that are not paths (`last`), keys whose setting writes the path first (a demo set), the fix."""

    what: str
    kind: str
    fix: str
    not_paths: tuple[str, ...] = ()
    written_by: tuple[str, ...] = ()
    uris: bool = False  # also takes an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/...)


_DEMO = "or run on the built-in demo set with data=synthetic"
# The MLflow model URIs a checkpoint key takes (their full check, against the store, is pneumo.tracking.registry's).
_MODEL_URI = re.compile(r"^(models:/[^/@:]+(@[^/]+|/\d+)|runs:/[0-9a-f]{32}(/.+)?)/?$")
PATHS: dict[str, PathRule] = {
    "ckpt": PathRule("checkpoint", "file", "pass ckpt=PATH to a .ckpt written by train.py (its run folder's "
                     "checkpoints/), ckpt=last / ckpt=best for the newest run's, or an MLflow model: "
                     "ckpt=models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model",
                     not_paths=("last", "best"), uris=True),
    "resume": PathRule("checkpoint to resume", "file", "pass resume=PATH to a last.ckpt or interrupted.ckpt of "
                       "an earlier run, or resume=last for the newest", not_paths=("last",)),
    "predict_dir": PathRule("folder of images to predict", "folder", "pass predict_dir=FOLDER holding the images"),
    "data.root": PathRule("data root", "folder", "unpack 'Chest X-Ray Images (Pneumonia)' so that ROOT/{train,test}/"
                          "{NORMAL,PNEUMONIA}/ exist and pass data.root=ROOT (or set PNEUMO_DATA_ROOT), " + _DEMO,
                          written_by=("data.synthetic",)),
    "data.csv": PathRule("label table", "file", "pass data.csv=FILE, the CSV that labels the images, "
                         "or run on the built-in demo table with data=synthetic_table", written_by=("data.synthetic_table",)),
    "data.image_dir": PathRule("image folder", "folder", "pass data.image_dir=FOLDER, where data.file_template's "
                               "files are, or run on the built-in demo table with data=synthetic_table",
                               written_by=("data.synthetic_table",)),
    "model": PathRule("model file", "file", "pass model=PATH to a .ckpt written by train.py or an .onnx export, or a "
                      "registered model: model=models:/NAME@ALIAS or models:/NAME/VERSION", uris=True),
}

MISSING: dict[str, str] = {
    "predict:ckpt": "python -m pneumo.predict needs ckpt=PATH: a .ckpt written by train.py (or ckpt=last), an "
                    "MLflow model such as ckpt=models:/pneumo@champion, or a model.onnx from python -m pneumo.export",
    "predict:predict_dir": "python -m pneumo.predict needs predict_dir=FOLDER, the images to score (searched "
                           "recursively: JPEG, PNG, DICOM)",
    "export:ckpt": "python -m pneumo.export needs ckpt=PATH to a .ckpt written by train.py (or ckpt=last / "
                   "ckpt=best for the newest run's)",
    "version": "python -m pneumo.promote needs version=N, the registered version to promote (train.py with "
               "registry.register=true prints it; the MLflow UI's Models page lists them)",
    "ckpt": "evaluate.py needs ckpt=PATH to a .ckpt written by train.py (or ckpt=last, or an MLflow model "
            "such as ckpt=models:/pneumo@champion)",
    "model": "the review page needs model=PATH to a .ckpt or .onnx file, or model=models:/NAME@ALIAS "
             "(python -m pneumo.app model=outputs/<date>/<time>/checkpoints/best-epoch02.ckpt)",
}


def value_problem(key: str, value: Any, shown: str | None = None) -> str | None:
    """The message for a value `key` may not hold (naming key, value, what is allowed and a fix), or None.
    `shown` is the value as the user typed it, when there is one."""
    rule = SCHEMA.get(key) or SWEEPER.get(key)
    if rule is None or rule.test(value):
        return None
    given = shown if shown is not None else _show(value)
    return f"{key}={given} is not allowed: {key} takes {rule.allowed}. Fix: {key}={rule.example}"


def path_problem(key: str, value: Any) -> str | None:
    """The message for a path in `PATHS` that does not exist (or is a file where a folder is needed), or None."""
    rule = PATHS.get(key)
    if rule is None or value is None or isinstance(value, dict) or str(value) in rule.not_paths:
        return None  # a dict: a config group chosen under the same name (train.py's model=baseline), not a path
    if rule.uris and str(value).startswith(("models:/", "runs:/")):  # looked up in the store when the run starts
        return None if _MODEL_URI.match(str(value)) else (
            f"{key}={value} is not a model URI: write models:/NAME@ALIAS (e.g. models:/pneumo@champion), "
            f"models:/NAME/VERSION or runs:/RUN_ID/model")
    path = Path(str(value)).expanduser()
    if path.is_file() if rule.kind == "file" else path.is_dir():
        return None
    state = "does not exist" if not path.exists() else f"is a {'folder' if path.is_dir() else 'file'}, not a {rule.kind}"
    return f"{rule.what} {path} {state} ({key}={value}). Fix: {rule.fix}"


def missing_problem(key: str, config_name: str | None = None) -> str:
    """The message for a mandatory value (`???`) left unset; `config_name`'s own words first
    (MISSING["predict:ckpt"] for conf/predict.yaml)."""
    return MISSING.get(f"{config_name}:{key}") or MISSING.get(key, f"{key} has no value (??? in the config): "
                                                                   f"pass {key}=VALUE")


def runtime_problem(runtime: str, ckpt: str, gradcam_on_predict: bool) -> str | None:
    """What is wrong with predict_dir's runtime= for the model file `ckpt` and Grad-CAM, or None:
    runtime=torch cannot run a .onnx graph, and ONNX Runtime computes no gradients for Grad-CAM."""
    is_onnx = ckpt.lower().endswith(".onnx")
    if runtime == "torch" and is_onnx:
        return (f"runtime=torch cannot run {ckpt} (an ONNX graph, no PyTorch weights). Fix: runtime=onnx, or "
                f"ckpt=PATH to the .ckpt it was exported from")
    if gradcam_on_predict and (runtime == "onnx" or (runtime == "auto" and is_onnx)):
        return ("gradcam.on_predict=true needs the PyTorch model: ONNX Runtime computes no gradients. Fix: "
                "runtime=torch with ckpt=PATH.ckpt, or gradcam.on_predict=false")
    return None
