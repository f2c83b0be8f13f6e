"""The LightningModule: loss, optimiser, device-side preprocessing and epoch-level clinical metrics."""
from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
from torch import nn

from pneumo.metrics import binary_metrics, choose_threshold
from torchmetrics import MetricCollection
from torchmetrics.classification import (BinaryAccuracy, BinaryAUROC, BinaryConfusionMatrix,
                                         BinaryPrecision, BinaryRecall, BinarySpecificity)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


def epoch_metrics() -> MetricCollection:
    """Metrics accumulated over a whole epoch (not averaged per batch), named as they are logged."""
    return MetricCollection({
        "recall": BinaryRecall(), "precision": BinaryPrecision(), "specificity": BinarySpecificity(),
        "acc": BinaryAccuracy(), "auroc": BinaryAUROC(), "confusion": BinaryConfusionMatrix(),
    }, compute_groups=False)


def flatten_epoch_metrics(values: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Scalars for the logger: the confusion matrix becomes prefix/tp, /fp, /tn, /fn."""
    flat = {f"{prefix}/{name}": value for name, value in values.items() if name != "confusion"}
    (tn, fp), (fn, tp) = values["confusion"].tolist()
    flat.update({f"{prefix}/tp": float(tp), f"{prefix}/fp": float(fp),
                 f"{prefix}/tn": float(tn), f"{prefix}/fn": float(fn)})
    return flat


class PneumoniaClassifier(L.LightningModule):
    """Binary classifier (1 = pneumonia) around any backbone that returns one logit per image."""

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None,
                 augment: nn.Module | None = None, pos_weight: float | None = None,
                 channels_last: bool = True, in_channels: int = 3, mean: list[float] | None = None,
                 std: list[float] | None = None, monitor: str = "val/auroc",
                 threshold_policy: str = "sensitivity", target_sensitivity: float = 0.95,
                 seed: int | None = None, freeze_epochs: int = 0, backbone_lr_scale: float = 1.0) -> None:
        super().__init__()
        if freeze_epochs < 0 or backbone_lr_scale <= 0:
            raise ValueError(f"model.freeze_epochs={freeze_epochs} must be >= 0 and model.backbone_lr_scale="
                             f"{backbone_lr_scale} > 0")
        if (freeze_epochs or backbone_lr_scale != 1) and not hasattr(model, "backbone_parameters"):
            raise ValueError(f"model.freeze_epochs / model.backbone_lr_scale need a model with backbone_parameters()"
                             f" and head_parameters(); {type(model).__name__} has none")
        # Fine-tuning: the backbone is frozen for the first `freeze_epochs` epochs, then trained at
        # `backbone_lr_scale` times the head's learning rate.
        self.freeze_epochs, self.backbone_lr_scale = int(freeze_epochs), float(backbone_lr_scale)
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.augment = augment
        self.channels_last, self.in_channels, self.monitor = channels_last, in_channels, monitor
        weight = None if pos_weight is None else torch.tensor(float(pos_weight))
        self.loss = nn.BCEWithLogitsLoss(pos_weight=weight)
        # Normalisation constants travel with the model (they belong to its pretrained weights).
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) if mean else None, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) if std else None, persistent=False)
        self.val_metrics = epoch_metrics()
        self.test_metrics = epoch_metrics()
        self.extra_checkpoint: dict[str, Any] = {}
        # With a seed, every training step reseeds torch from (seed, step, rank): augmentation and
        # dropout then depend on the step, not on history, so a resumed run repeats an uninterrupted one.
        self.seed = seed
        # The operating threshold is chosen on each epoch's validation scores and saved with the
        # checkpoint of that epoch, so evaluation uses the threshold that belongs to the weights.
        self.threshold_policy, self.target_sensitivity = threshold_policy, target_sensitivity
        self.threshold: dict[str, Any] = {"policy": "fixed", "value": 0.5}
        self.val_scores: tuple[torch.Tensor, torch.Tensor] | None = None
        self._val_batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ---- device-side preprocessing ---------------------------------------------------------------
    def preprocess(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float model input: [0, 1], augmented in training, channels expanded."""
        x = images.float().div_(255)
        if train and self.augment is not None:
            x = self.augment(x)  # before expanding channels: a third of the work, the same result
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        training = self._trainer is not None and self.trainer.training
        if training and self.seed is not None:
            torch.manual_seed(self.seed * 1_000_003 + self.trainer.global_step * 101 + self.global_rank)
        x, y = self.preprocess(images, train=training), labels.float()
        if training and self.augment is not None:
            x, y = self.augment.mix(x, y)
        return x, y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ---- steps -----------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, batch {batch_idx} (global step "
                f"{self.global_step}); stopped. Checkpoints saved before this step are kept; try a lower optim.lr.")
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], prefix: str,
                   metrics: MetricCollection) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        self.log(f"{prefix}/loss", self.loss(logits, y), on_epoch=True, batch_size=len(y), sync_dist=True)
        probs = torch.sigmoid(logits.float())
        metrics.update(probs, y.long())
        return probs

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        probs = self._eval_step(batch, "val", self.val_metrics)
        self._val_batches.append((batch[1].detach(), probs.detach()))

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, _ = batch
        return torch.sigmoid(self(x).float())

    def _log_epoch(self, prefix: str, metrics: MetricCollection) -> None:
        self.log_dict(flatten_epoch_metrics(metrics.compute(), prefix), prog_bar=False)
        metrics.reset()

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()  # whatever a previous pass left (e.g. an interrupted one) is not this epoch's
        self._val_batches.clear()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_metrics)
        if not self._val_batches:
            return
        labels = torch.cat([y for y, _ in self._val_batches])
        probs = torch.cat([p for _, p in self._val_batches])
        self._val_batches.clear()
        if self.trainer is not None and self.trainer.world_size > 1:  # every process sees all scores
            labels, probs = (self.all_gather(t).flatten() for t in (labels, probs))
        self.val_scores = (labels.cpu(), probs.cpu())
        self.threshold = self._choose_threshold(*self.val_scores)
        self.log("val/threshold", self.threshold["value"])

    def _choose_threshold(self, labels: torch.Tensor, probs: torch.Tensor) -> dict[str, Any]:
        if labels.unique().numel() < 2:  # a one-class validation set cannot place a threshold
            return {"policy": "fixed", "value": 0.5, "note": "validation held one class only"}
        value = choose_threshold(labels.numpy(), probs.numpy(), self.threshold_policy, self.target_sensitivity)
        return {"policy": self.threshold_policy, "value": float(value),
                "target_sensitivity": self.target_sensitivity}

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_metrics)

    # ---- fine-tuning schedule ----------------------------------------------------------------------
    @property
    def backbone_frozen(self) -> bool:
        return self.current_epoch < self.freeze_epochs

    def on_train_epoch_start(self) -> None:
        """Freeze or unfreeze the backbone for this epoch. Derived from the epoch number alone, so a
        resumed run freezes exactly as an uninterrupted one."""
        if not self.freeze_epochs:
            return
        frozen = self.backbone_frozen
        for parameter in self.model.backbone_parameters():
            parameter.requires_grad_(not frozen)
        # A frozen backbone keeps its pretrained BatchNorm statistics (inference mode) as well.
        for layer in self.model.backbone.modules() if hasattr(self.model, "backbone") else ():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.train(not frozen)

    # ---- optimisation ----------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]] | Any:
        """One group, or backbone and head groups when fine-tuning (the backbone at a lower rate)."""
        if not self.freeze_epochs and self.backbone_lr_scale == 1:
            return self.parameters()
        return [{"params": list(self.model.backbone_parameters()), "name": "backbone"},
                {"params": list(self.model.head_parameters()), "name": "head"}]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        for group in optimizer.param_groups:
            if group.get("name") == "backbone":
                group["lr"] *= self.backbone_lr_scale  # before any scheduler records initial_lr
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch"}}

    # ---- checkpoints carry what evaluation needs to rebuild the run ------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pneumo"] = {**self.extra_checkpoint, "threshold": self.threshold,
                                "validation": self.validation_figures()}

    def validation_figures(self) -> dict[str, Any] | None:
        """This epoch's validation metrics at the chosen threshold and at 0.5: what an external
        evaluation is compared with."""
        if self.val_scores is None or self.val_scores[0].unique().numel() < 2:
            return None
        labels, probs = (t.numpy() for t in self.val_scores)
        return {"n_images": int(len(labels)), "n_positive": int(labels.sum()),
                "at_threshold": binary_metrics(labels, probs, self.threshold["value"]),
                "at_0.5": binary_metrics(labels, probs, 0.5)}
