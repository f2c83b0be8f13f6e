"""Lightning callbacks of our own."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from pneumo.data.labels import CLASS_NAMES


class AugmentationGrid(L.Callback):
    """Saves (and logs to MLflow) a grid of augmented training images with their labels at fit start.

    The seed's visual sanity check: one look shows whether flips, rotations and contrast are sane and
    whether labels still match the pictures after the pipeline.
    """

    def __init__(self, path: str, n: int = 16, columns: int = 4) -> None:
        self.path, self.n, self.columns = Path(path), n, columns

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        dataset = trainer.datamodule.datasets["train"]
        count = min(self.n, len(dataset))
        # Evenly spread over the split, so both classes show (files are listed class by class).
        items = [dataset[int(i)] for i in torch.linspace(0, len(dataset) - 1, count).round().long()]
        images = torch.stack([torch.as_tensor(image) for image, _ in items])
        labels = [int(label) for _, label in items]
        with torch.no_grad():
            x = pl_module.preprocess(images.to(pl_module.device), train=True)
        if pl_module.mean is not None:  # undo normalisation for display
            x = x * pl_module.std + pl_module.mean
        save_image_grid(x.float().clamp(0, 1).cpu(), [CLASS_NAMES[y] for y in labels], self.path, self.columns)
        log_figures(trainer, [self.path])


def log_figures(trainer: L.Trainer, paths: list[Path], folder: str = "figures") -> None:
    """Files into the run's MLflow artifacts under `folder` (no-op without an MLflow logger)."""
    from pneumo.tracking.logger import log_file

    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            for path in paths:
                log_file(logger, path, folder)


def validation_paths(trainer: L.Trainer, n: int) -> list[str]:
    """The file of each validation score, in the order the module gathered them: each process scores
    every world_size-th image (EpochBatches, unshuffled) and the gather concatenates the processes in
    rank order. Empty strings when the data module lists no val files or the count differs."""
    files = list(getattr(trainer.datamodule, "files", {}).get("val", [])) if trainer.datamodule else []
    world = max(trainer.world_size, 1)
    ordered = [path for rank in range(world) for path in files[rank::world]]
    return ordered if len(ordered) == n else [""] * n


def write_scores(path: Path, labels: Any, probs: Any, files: list[str]) -> Path:
    """A CSV with header path,label,probability: labels int (N,), probabilities float (N,), files str (N,)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "probability"])
        writer.writerows((file, int(label), repr(float(prob))) for file, label, prob in zip(files, labels, probs))
    return path


def save_image_grid(images: torch.Tensor, titles: list[str], path: Path, columns: int = 4) -> Path:
    """Float images (N, C, H, W) in [0, 1] as a titled PNG grid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, images, titles):
        axis.imshow(image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image[0].numpy(),
                    cmap="gray", vmin=0, vmax=1)
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


class BestEpochFigures(L.Callback):
    """At the end of training, the ROC and confusion-matrix figures of the best validation epoch, and its
    scores as `validation/scores.csv` (path, label, probability; one row per validation image), which
    cross-validation pools into out-of-fold figures (`pneumo.training.folds`).

    The best epoch is tracked here with the same monitor as the checkpoint, so the figures belong
    to the weights the best checkpoint holds, at that checkpoint's operating threshold.
    """

    def __init__(self, output_dir: str, monitor: str = "val/auroc", mode: str = "max") -> None:
        self.output_dir, self.monitor, self.sign = Path(output_dir), monitor, 1.0 if mode == "max" else -1.0
        self.best: float | None = None
        self.scores: tuple[torch.Tensor, torch.Tensor] | None = None
        self.threshold: float = 0.5

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or getattr(pl_module, "val_scores", None) is None:
            return
        if self.best is None or self.sign * float(value) > self.sign * self.best:
            self.best, self.scores = float(value), pl_module.val_scores
            self.threshold = float(pl_module.threshold["value"])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.scores is None:
            return
        from pneumo.evaluation import plots
        from pneumo.evaluation.metrics import confusion_counts

        labels, probs = (t.numpy() for t in self.scores)
        scores = write_scores(self.output_dir / "validation" / "scores.csv", labels, probs,
                              validation_paths(trainer, len(labels)))
        log_figures(trainer, [scores], "validation")
        if len(set(labels.tolist())) < 2:
            return  # a one-class validation split has no ROC
        counts = confusion_counts(labels.astype(int), probs >= self.threshold)
        paths = [plots.plot_roc(labels.astype(int), probs, self.threshold, self.output_dir / "val_best_roc.png"),
                 plots.plot_confusion(path=self.output_dir / "val_best_confusion.png", **counts)]
        log_figures(trainer, paths)


class SaveOnInterrupt(L.Callback):
    """Ctrl-C (SIGINT) or SIGTERM during training: save `interrupted.ckpt` before the process exits,
    so `resume=` can continue from where it stopped. Crashes (e.g. a NaN loss) save nothing: the
    weights may be the cause, and the checkpoints written before stay as they were."""

    def __init__(self, dirpath: str, filename: str = "interrupted.ckpt") -> None:
        self.path = Path(dirpath) / filename

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.state.fn == "fit":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(self.path)
            print(f"\ninterrupted: saved {self.path}; continue with resume={self.path}", flush=True)


class TrialReporter(L.Callback):
    """The training side of an Optuna trial (`python train.py hparams_search=optuna`, pneumo.search).

    After every validation epoch the objective (`monitor`, e.g. val/auroc) goes to the trial as its
    intermediate value at step = epoch. When the pruner says stop, training ends with that epoch (its
    checkpoints are written as usual) and `optuna.TrialPruned` is raised: the MLflow run gets the tag
    optuna.state=PRUNED and run_training ends it KILLED; the sweeper records the trial as PRUNED.
    Under DDP rank 0 reports and its decision is broadcast to all ranks.
    """

    def __init__(self, context: Any, trial_number: int, monitor: str) -> None:
        self.context, self.trial_number, self.monitor = context, trial_number, monitor
        self.link: Any = None
        self.pruned: tuple[int, float] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from pneumo.search.context import TrialLink

        self.link = TrialLink(self.context, self.trial_number)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                self.link.record_run(logger.run_id)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        stop = False
        if self.link is not None and value is not None:
            stop = self.link.report(float(value), trainer.current_epoch)
        if trainer.strategy.broadcast(stop, src=0):
            self.pruned = (trainer.current_epoch, float(value) if value is not None else float("nan"))
            trainer.should_stop = True  # ends after this epoch's hooks, so its checkpoint is saved

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.pruned is None:
            return
        import optuna

        from pneumo.search.context import STATE_TAG
        from pneumo.tracking.logger import set_tag

        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger) and trainer.is_global_zero:
                set_tag(logger, STATE_TAG, "PRUNED")
        epoch, value = self.pruned
        raise optuna.TrialPruned(f"trial {self.trial_number} pruned after epoch {epoch}: {self.monitor} "
                                 f"{value:.4f} lags the other trials at that epoch")


def trial_reporter(cfg: DictConfig) -> TrialReporter | None:
    """The TrialReporter of a job that is a trial of an Optuna search (its config has the hidden key
    optuna.trial_number and its process the search's address), else None."""
    from pneumo.search.context import SearchContext, trial_number

    context, number = SearchContext.current(), trial_number(cfg)
    if context is None or number is None:
        return None
    return TrialReporter(context, number, str(cfg.get("objective", context.objective)))


def build_callbacks(cfg: DictConfig) -> list[Any]:
    """Every non-null entry of the `callbacks` group (set one to null to switch it off), plus the trial
    reporter when the run is a trial of an Optuna search."""
    callbacks = [instantiate(entry) for entry in (cfg.get("callbacks") or {}).values() if entry is not None]
    reporter = trial_reporter(cfg)
    return callbacks + [reporter] if reporter is not None else callbacks
