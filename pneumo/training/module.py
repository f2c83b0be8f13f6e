"""The LightningModule: loss, optimiser, device-side preprocessing and epoch-level clinical metrics.

Validation metrics carry the names evaluate.py and metrics.json use (`val/sensitivity`, `val/specificity`,
`val/ppv`, `val/npv`, `val/auroc`, ..., `val/tp|fp|tn|fn`), computed by the same function
(`pneumo.evaluation.metrics.binary_metrics`) over every validation image of the epoch, at the epoch's
operating threshold (`val/threshold`); the same figures at 0.5 carry the suffix `_at_0.5`. With
`calibration="temperature"` each validation epoch first fits temperature scaling on its logits
(`pneumo.evaluation.calibration`, Guo et al. 2017; `val/temperature`), and the validation metrics, the
threshold and the checkpoint's figures use the calibrated probabilities sigmoid(logit / T) (`val/loss`
stays the training loss on the raw logits). Under DDP the scores of all processes are gathered first and
each image is counted once (the evaluation sampler does not pad), so 1 and N processes give the same
metrics and threshold (`val/loss` is Lightning's mean of the processes' means).
"""
from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
from torch import nn
from torchmetrics.utilities.distributed import gather_all_tensors

from pneumo.evaluation.calibration import METHODS, calibration_record, checkpoint_temperature
from pneumo.evaluation.metrics import METRIC_KEYS, THRESHOLD_FREE_KEYS, binary_metrics, confusion_counts
from pneumo.evaluation.thresholds import choose_threshold

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]
AT_HALF = "_at_0.5"  # suffix of the threshold-dependent figures computed at 0.5 instead of the operating threshold


def epoch_figures(labels: Any, probs: Any, threshold: float, prefix: str) -> dict[str, float]:
    """Every clinical metric of one split for the logger: `prefix/<name>` at `threshold`, the counts
    `prefix/tp|fp|tn|fn`, and the threshold-dependent ones again at 0.5 as `prefix/<name>_at_0.5`.

    labels, probs: 1-D arrays (0/1 labels, PNEUMONIA probabilities) of the same length. Metrics that are
    undefined on these images (NaN, e.g. AUROC on one class) are left out rather than logged as NaN.
    """
    at_threshold = binary_metrics(labels, probs, threshold)
    at_half = binary_metrics(labels, probs, 0.5)
    counts = confusion_counts(labels, probs >= threshold)
    figures = {f"{prefix}/{key}": at_threshold[key] for key in METRIC_KEYS}
    figures.update({f"{prefix}/{key}{AT_HALF}": at_half[key] for key in METRIC_KEYS if key not in THRESHOLD_FREE_KEYS})
    figures.update({f"{prefix}/{key}": float(value) for key, value in counts.items()})
    return {key: float(value) for key, value in figures.items() if value == value}  # drop NaN


class PneumoniaClassifier(L.LightningModule):
    """Binary classifier (1 = pneumonia) around any backbone that returns one logit per image."""

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None,
                 augment: nn.Module | None = None, pos_weight: float | None = None,
                 channels_last: bool = True, in_channels: int = 3, mean: list[float] | None = None,
                 std: list[float] | None = None, monitor: str = "val/auroc",
                 threshold_policy: str = "sensitivity", target_sensitivity: float = 0.95,
                 seed: int | None = None, freeze_epochs: int = 0, backbone_lr_scale: float = 1.0,
                 calibration: str = "temperature") -> None:
        super().__init__()
        if calibration not in METHODS:
            raise ValueError(f"calibration={calibration} is not known: use one of {', '.join(METHODS)}")
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
        self.extra_checkpoint: dict[str, Any] = {}
        # With a seed, every training step reseeds torch from (seed, step, rank): augmentation and
        # dropout then depend on the step, not on history, so a resumed run repeats an uninterrupted one.
        self.seed = seed
        # The operating threshold is chosen on each epoch's validation scores and saved with the
        # checkpoint of that epoch, so evaluation uses the threshold that belongs to the weights.
        self.threshold_policy, self.target_sensitivity = threshold_policy, target_sensitivity
        self.threshold: dict[str, Any] = {"policy": "fixed", "value": 0.5}
        # Temperature scaling, fitted like the threshold on each epoch's validation logits and saved with
        # that epoch's checkpoint; predict_step and the test figures divide the logits by it.
        self.calibration = calibration
        self.calibration_fit: dict[str, Any] = {"method": "none"}
        self.temperature: float = 1.0
        self.predict_logits = False  # True: predict_step returns raw logits (evaluate.py's before/after)
        self.val_scores: tuple[torch.Tensor, torch.Tensor] | None = None  # (labels, calibrated probs)
        self._scores: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}

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

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], prefix: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{prefix}/loss", self.loss(logits, y), on_epoch=True, batch_size=len(y), sync_dist=True)
        self._scores[prefix].append((y.detach().long(), logits.detach().float()))  # logits: calibrated at epoch end

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """(B,) float32: calibrated probabilities sigmoid(logit / temperature), or the logits when
        `predict_logits` is set."""
        x, _ = batch
        logits = self(x).float()
        return logits if self.predict_logits else torch.sigmoid(logits / self.temperature)

    def set_temperature(self, temperature: float) -> None:
        """Use `temperature` (> 0) from now on, e.g. a checkpoint's (`checkpoint_temperature`)."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def _epoch_scores(self, prefix: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(labels, logits) of every image of the epoch's split, from all processes, each image once.

        The evaluation sampler gives each process its own images with no padding, so the processes may
        hold different counts: torchmetrics' gather pads and trims them (torch.distributed.all_gather
        needs equal shapes), and nothing is counted twice.
        """
        batches = self._scores[prefix]
        labels = torch.cat([y for y, _ in batches]) if batches else torch.zeros(0, dtype=torch.long,
                                                                                  device=self.device)
        logits = torch.cat([z for _, z in batches]) if batches else torch.zeros(0, device=self.device)
        batches.clear()
        if self._trainer is not None and self.trainer.world_size > 1:
            labels = torch.cat(gather_all_tensors(labels))
            logits = torch.cat(gather_all_tensors(logits))
        if not len(labels):
            return None
        return labels.cpu(), logits.cpu()

    def on_validation_epoch_start(self) -> None:
        self._scores["val"].clear()  # whatever a previous pass left (e.g. an interrupted one) is not this epoch's

    def on_test_epoch_start(self) -> None:
        self._scores["test"].clear()

    def on_validation_epoch_end(self) -> None:
        scores = self._epoch_scores("val")
        if scores is None or (self._trainer is not None and self.trainer.sanity_checking):
            return  # a sanity check's few batches must not replace the temperature or threshold
        labels, logits = scores
        # Every process fits on the same gathered logits, so all hold the same temperature.
        self.calibration_fit = calibration_record(labels.numpy(), logits.numpy(), self.calibration)
        self.set_temperature(checkpoint_temperature({"calibration": self.calibration_fit}))
        self.val_scores = (labels, torch.sigmoid(logits.double() / self.temperature))
        self.threshold = self._choose_threshold(*self.val_scores)  # on the calibrated probabilities
        probs = self.val_scores[1].numpy()
        self.log_dict({**epoch_figures(labels.numpy(), probs, self.threshold["value"], "val"),
                       "val/threshold": self.threshold["value"], "val/temperature": self.temperature})

    def on_test_epoch_end(self) -> None:
        scores = self._epoch_scores("test")
        if scores is not None:
            labels, probs = scores[0].numpy(), torch.sigmoid(scores[1].double() / self.temperature).numpy()
            self.log_dict(epoch_figures(labels, probs, self.threshold["value"], "test"))

    def _choose_threshold(self, labels: torch.Tensor, probs: torch.Tensor) -> dict[str, Any]:
        if labels.unique().numel() < 2:  # a one-class validation set cannot place a threshold
            return {"policy": "fixed", "value": 0.5, "note": "validation held one class only"}
        value = choose_threshold(labels.numpy(), probs.numpy(), self.threshold_policy, self.target_sensitivity)
        return {"policy": self.threshold_policy, "value": float(value),
                "target_sensitivity": self.target_sensitivity}

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
                                "calibration": self.calibration_fit, "validation": self.validation_figures()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run continues with the checkpoint's temperature (T = 1 if it has none) and threshold."""
        pneumo = checkpoint.get("pneumo") or {}
        self.calibration_fit = dict(pneumo.get("calibration") or {"method": "none"})
        self.set_temperature(checkpoint_temperature(pneumo))
        if pneumo.get("threshold"):  # the pair stays together if the resumed run stops before validating again
            self.threshold = dict(pneumo["threshold"])

    def validation_figures(self) -> dict[str, Any] | None:
        """This epoch's validation metrics at the chosen threshold and at 0.5: what an external
        evaluation is compared with."""
        if self.val_scores is None or self.val_scores[0].unique().numel() < 2:
            return None
        labels, probs = (t.numpy() for t in self.val_scores)
        return {"n_images": int(len(labels)), "n_positive": int(labels.sum()),
                "at_threshold": binary_metrics(labels, probs, self.threshold["value"]),
                "at_0.5": binary_metrics(labels, probs, 0.5)}
