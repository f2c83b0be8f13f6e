"""Objects built from the composed config with hydra.utils.instantiate, shared by train and evaluate."""
from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from pneumo.module import PneumoniaClassifier


def build_module(cfg: DictConfig, pos_weight: float | None = None, train: bool = True) -> PneumoniaClassifier:
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


def build_callbacks(cfg: DictConfig) -> list[Any]:
    """Every non-null entry of the `callbacks` group (set one to null to switch it off)."""
    return [instantiate(entry) for entry in (cfg.get("callbacks") or {}).values() if entry is not None]
