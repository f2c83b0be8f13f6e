"""Objects built from the composed config with hydra.utils.instantiate, shared by train and evaluate."""
from __future__ import annotations

from typing import TYPE_CHECKING

from hydra.utils import instantiate
from omegaconf import DictConfig

if TYPE_CHECKING:  # the module is named by the config (_target_); models/ imports nothing from training/
    from pneumo.training.module import PneumoniaClassifier


def build_module(cfg: DictConfig, pos_weight: float | None = None, train: bool = True) -> "PneumoniaClassifier":
    """The LightningModule with its backbone; the optimiser and augmentation only when training."""
    net = cfg.model.net
    # Evaluation and serving load trained weights over the backbone: fetching ImageNet weights first
    # would be wasted work, and would fail offline for torchvision's.
    no_download = {key: value for key, value in (("pretrained", False), ("weights_path", None))
                   if not train and key in net}
    return instantiate(
        cfg.module,
        model=instantiate(net, **no_download),
        optimizer=instantiate(cfg.optim) if train else None,
        scheduler=instantiate(cfg.scheduler) if train and cfg.get("scheduler") else None,
        augment=instantiate(cfg.augment) if train else None,
        pos_weight=pos_weight,
    )
