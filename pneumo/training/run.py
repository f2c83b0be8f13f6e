"""One training run: data, model, trainer and MLflow run from the composed Hydra config."""
from __future__ import annotations

import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from pneumo.audit.leaks import warn_on_leaks
from pneumo.config import PROJECT_ROOT, flatten
from pneumo.models.checkpoints import load_checkpoint, newest_checkpoint, weights_only_checkpoint
from pneumo.models.factory import build_module
from pneumo.tracking import logger as tracking
from pneumo.search.context import trial_tags, was_pruned
from pneumo.training.callbacks import build_callbacks
from pneumo.training.sweep import SWEEP_ID_ENV, SWEEP_KEYS_ENV, SWEEP_TAG

log = logging.getLogger(__name__)

# Overrides that say where things go, not what differs between runs: left out of run names.
_NOT_IN_RUN_NAME = ("hydra.", "hydra/", "logger.", "data.root", "data.csv", "data.image_dir", "data.cache",
                    "output_dir", "cache_dir", "hparams_search")


def describe_overrides() -> str | None:
    """A run name from the overrides: in a sweep only the swept keys ('augment.strength=0.5'),
    otherwise every override that changes the experiment."""
    try:
        overrides = [o.lstrip("+~") for o in HydraConfig.get().overrides.task]
    except ValueError:  # not inside a Hydra app
        return None
    swept = [key for key in os.environ.get(SWEEP_KEYS_ENV, "").split(",") if key]
    if swept:
        kept = [o for o in overrides if o.split("=", 1)[0] in swept]
    else:
        kept = [o for o in overrides if not o.startswith(_NOT_IN_RUN_NAME)]
    return ",".join(_short(o) for o in kept) or None


def _short(override: str) -> str:
    """An override as a run name shows it: a float drawn by a search to 4 significant digits
    ('optim.lr=0.0001329291894316216' -> 'optim.lr=0.0001329'); the params keep the full value."""
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}={number:.4g}" if "." in value or "e" in value.lower() else override


def run_tags() -> dict[str, str]:
    """The sweep id, when this run is one job of a Hydra multirun."""
    sweep_id = os.environ.get(SWEEP_ID_ENV)
    return {SWEEP_TAG: sweep_id} if sweep_id else {}


def run_training(cfg: DictConfig) -> float:
    """Train, record everything in MLflow, and return the objective (for sweepers)."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    # Images or patients shared by the splits make validation and test figures optimistic: warn, naming them.
    leaks = warn_on_leaks(datamodule) if cfg.get("check_leaks", True) else None
    log.info("data %s: %s", datamodule.root, datamodule.summary())

    resume, resume_checkpoint = resolve_resume(cfg.get("resume"))
    resumed_run = (resume_checkpoint["pneumo"].get("mlflow") or {}).get("run_id") if resume else None
    logger = instantiate(cfg.logger, run_name=cfg.run_name or describe_overrides(),
                         tags=run_tags() | trial_tags(cfg), run_id=resumed_run) if cfg.get("logger") else None
    try:
        module = build_module(cfg, pos_weight=datamodule.pos_weight)
        module.extra_checkpoint = {"config": OmegaConf.to_container(cfg, resolve=True),
                                   "mlflow": {"run_id": logger.run_id, "tracking_uri": logger.tracking_uri}
                                   if logger else None}
        trainer: L.Trainer = instantiate(cfg.trainer, logger=logger or False, callbacks=build_callbacks(cfg),
                                         **_strategy_for_freezing(cfg))
        if logger and resumed_run:
            tracking.reopen_run(logger)
            tracking.set_tag(logger, "resumed_from", str(resume))
            _record_resume(logger, cfg, resume_checkpoint, resume)
        elif logger:
            _record_context(logger, cfg, datamodule, leaks)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    except BaseException as error:
        # Never leave a RUNNING run behind. Ctrl-C reaches here as Lightning's sys.exit(1), SIGTERM as
        # SIGTERMException (a SystemExit whose exit code would be 0): both are KILLED, the rest FAILED.
        # A pruned Optuna trial (TrialPruned) was stopped on purpose: KILLED too.
        stopped = isinstance(error, (KeyboardInterrupt, SystemExit)) or was_pruned(error)
        if logger:
            tracking.end_run(logger, "KILLED" if stopped else "FAILED")
        if isinstance(error, SIGTERMException):
            raise SystemExit(128 + signal.SIGTERM) from error
        raise
    if trainer.interrupted:  # Lightning swallows Ctrl-C after a graceful shutdown
        if logger:
            tracking.end_run(logger, "KILLED")
        raise KeyboardInterrupt("training interrupted")

    objective = _objective(trainer, cfg.objective)
    if logger:
        with_model = bool(cfg.get("mlflow_model"))
        best = _record_results(logger, trainer, str(cfg.get("tracking", {}).get("log_checkpoints", "best")),
                               model_carries_best=with_model)
        if with_model and best:
            _log_best_model(logger, cfg, *best)
        elif (cfg.get("registry") or {}).get("register"):
            log.warning("registry.register=true but no MLflow model was logged (mlflow_model=false or no best "
                        "checkpoint): nothing registered")
    print(where_things_went(cfg, trainer, objective, logger))
    return objective


def where_things_went(cfg: DictConfig, trainer: L.Trainer, objective: float, logger) -> str:
    """The end of a run, said plainly: the run folder, the best checkpoint, the next command, the MLflow run."""
    lines = ["", f"Run folder: {cfg.output_dir}"]
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    if best:
        lines.append(f"Best checkpoint ({cfg.objective} {objective:.4f}): {best}")
        lines.append(f"Next: python evaluate.py ckpt={best}")
    if logger:
        lines.append(f"MLflow run {logger.run_id}; open it with:")
        lines.append(tracking.ui_hint(logger.tracking_uri, logger.experiment_id))
    return "\n".join(lines)


def resolve_resume(value: str | None) -> tuple[Path | None, dict[str, Any] | None]:
    """`resume=PATH`, or `resume=last`: the newest last.ckpt or interrupted.ckpt under outputs/ and
    multirun/; returned with the checkpoint, read once and checked to hold a training state."""
    if not value:
        return None, None
    if value == "last":
        try:
            path = newest_checkpoint(PROJECT_ROOT)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"resume=last {error} (resume=PATH)") from None
    else:
        path = Path(value).expanduser()
    checkpoint = load_checkpoint(path)  # fails early, with the reason, on a missing or foreign file
    if "loops" not in checkpoint:
        raise ValueError(f"resume={path}: the checkpoint holds weights but no training state (e.g. one "
                         f"imported from Keras), so there is nothing to continue; evaluate it instead")
    return path, checkpoint


def _record_context(logger, cfg: DictConfig, datamodule, leaks: list[str] | None = None) -> None:
    tracking.log_config(logger, cfg)
    if leaks is not None:  # None: not checked (check_leaks=false)
        tracking.set_tag(logger, "data.leaks", str(len(leaks)))
        if leaks:
            tracking.log_text(logger, "\n".join(leaks) + "\n", "data/leaks.txt")
    counts = datamodule.summary()
    tracking.log_json(logger, {"root": str(datamodule.root), "counts": counts, "data_set": datamodule.describe(),
                               "pos_weight": datamodule.pos_weight}, "data/summary.json")
    logger.log_hyperparams({f"data.n_{split}_{name.lower()}": n
                            for split, by_class in counts.items() for name, n in by_class.items()}
                           | {"data.pos_weight_used": datamodule.pos_weight})
    if datamodule.skipped:
        tracking.log_text(logger, datamodule.skipped_files_text(), "data/skipped_files.txt")
    logger.log_hyperparams({"data.n_skipped_files": len(datamodule.skipped)})
    if datamodule.output_dir is not None:
        tracking.log_file(logger, datamodule.output_dir / "split.json", "data")
        tracking.log_file(logger, datamodule.output_dir / ".hydra" / "overrides.yaml", "config")


# Keys that say where this process writes, not how the model is trained: not a change worth recording.
_WHERE_KEYS = ("resume", "output_dir", "data.output_dir", "cache_dir", "data.cache_dir", "run_name")


def changed_settings(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{dotted key: {"before": value, "after": value}} for every setting that differs between two
    resolved configs (nested dicts), leaving out the keys that only say where files go."""
    flat_before, flat_after = flatten(before), flatten(after)
    old_dir, new_dir = str(flat_before.get("output_dir")), str(flat_after.get("output_dir"))

    def same(key: str) -> bool:  # paths inside the run folder move with it (checkpoints' dirpath, ...)
        old, new = flat_before.get(key), flat_after.get(key)
        return old == new or (isinstance(old, str) and isinstance(new, str) and old.replace(old_dir, new_dir) == new)

    return {key: {"before": flat_before.get(key), "after": flat_after.get(key)}
            for key in sorted(set(flat_before) | set(flat_after)) if key not in _WHERE_KEYS and not same(key)}


def _record_resume(logger, cfg: DictConfig, checkpoint: dict[str, Any], path: Path) -> None:
    """A resumed run keeps its MLflow params (written once), so what this resume changed goes beside
    them: the command-line overrides and the changed settings as tags, the details in
    config/resume_<n>.json (n counts the resumes of this run)."""
    changed = changed_settings(checkpoint["pneumo"].get("config") or {}, OmegaConf.to_container(cfg, resolve=True))
    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not inside a Hydra app
        overrides = []
    number = 1 + len([a for a in logger.experiment.list_artifacts(logger.run_id, "config")
                      if a.path.split("/")[-1].startswith("resume_")])
    tracking.set_tag(logger, "resume.overrides", " ".join(overrides))
    tracking.set_tag(logger, "resume.changed", ",".join(changed) or "nothing")
    tracking.log_json(logger, {"resumed_from": str(path), "overrides": overrides, "changed": changed},
                      f"config/resume_{number}.json")
    if changed:
        log.info("resuming with changed settings (recorded in the MLflow run): %s",
                 ", ".join(f"{key} {v['before']} -> {v['after']}" for key, v in changed.items()))


def _strategy_for_freezing(cfg: DictConfig) -> dict[str, str]:
    """A frozen backbone leaves parameters without gradients, which plain DDP refuses: switch the
    DDP strategies to their find-unused-parameters variant when model.freeze_epochs > 0."""
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if cfg.model.get("freeze_epochs", 0) and strategy in ("ddp", "ddp_spawn"):
        log.info("model.freeze_epochs > 0: using strategy %s_find_unused_parameters_true", strategy)
        return {"strategy": f"{strategy}_find_unused_parameters_true"}
    return {}


def _record_results(logger, trainer: L.Trainer, log_checkpoints: str = "best",
                    model_carries_best: bool = False) -> tuple[str, dict[str, Any]] | None:
    """Checkpoints (as tracking.log_checkpoints says) and the best one's operating threshold into the run;
    returns the best checkpoint (path and contents, read once) for the model export.

    With `model_carries_best` (mlflow_model=true) the best epoch's weights-only checkpoint is the MLflow
    model's one artifact (`pneumo.deploy.mlflow_model`), so `best` does not log it a second time under
    checkpoints/: the tag `best_checkpoint_uri` says where it is (runs:/RUN_ID/model, read back by
    `pneumo.tracking.registry.resolve_model_checkpoint`), set once the model is logged."""
    checkpoint = trainer.checkpoint_callback
    if checkpoint is None:
        return None
    if log_checkpoints == "all":  # the full training state: resumable from the MLflow store alone
        for path in {checkpoint.best_model_path, checkpoint.last_model_path} - {""}:
            tracking.log_file(logger, Path(path), "checkpoints")
    if not checkpoint.best_model_path:
        return None
    tracking.set_tag(logger, "best_checkpoint", Path(checkpoint.best_model_path).name)
    best = load_checkpoint(checkpoint.best_model_path)
    # Weights and metadata only (a third of the size, enough to evaluate and serve); with the MLflow model
    # it is stored once, as the model's artifact.
    if log_checkpoints == "best" and not model_carries_best:
        with tempfile.TemporaryDirectory() as folder:
            slim = Path(folder) / Path(checkpoint.best_model_path).name
            torch.save(weights_only_checkpoint(best), slim)
            tracking.log_file(logger, slim, "checkpoints")
    # The operating threshold that belongs to the best weights, as evaluate.py will use it.
    # Tags, not params: a resumed run may choose another threshold.
    for key, value in best["pneumo"].get("threshold", {}).items():
        tracking.set_tag(logger, f"threshold.{key}", str(value))
    return checkpoint.best_model_path, best


def _log_best_model(logger, cfg: DictConfig, path: str, checkpoint: dict[str, Any]) -> None:
    """The best checkpoint, weights only, as the run's MLflow pyfunc model `model`; registered as a new
    version of registry.name when registry.register=true."""
    from pneumo.deploy.mlflow_model import log_pyfunc_model
    from pneumo.deploy.registry import register_model

    model_uri = logger.guard("the MLflow model", log_pyfunc_model, logger.tracking_uri, logger.run_id, checkpoint,
                             Path(path).name, record=path)
    if model_uri:  # where the best weights are, since checkpoints/ does not repeat them
        tracking.set_tag(logger, "best_checkpoint_uri", f"runs:/{logger.run_id}/model")
    registry = cfg.get("registry") or {}
    if model_uri and registry.get("register"):
        validation = (checkpoint["pneumo"].get("validation") or {}).get("at_threshold") or {}
        tags = {"pneumo.checkpoint": Path(path).name, **{f"pneumo.val_{key}": str(validation[key])
                                                         for key in ("auroc", "sensitivity") if key in validation}}
        data_option = HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None
        logger.guard(f"the registration as {registry.name}", register_model, logger.tracking_uri, model_uri,
                     str(registry.name), logger.run_id, tags, data_option, record=model_uri)


def _objective(trainer: L.Trainer, name: str) -> float:
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.monitor == name and checkpoint.best_model_score is not None:
        return float(checkpoint.best_model_score)
    value = trainer.callback_metrics.get(name)
    return float(value) if value is not None else float("nan")
