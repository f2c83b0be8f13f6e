"""Which network the benches train and at what input: one config of ``conf/model``, read with OmegaConf.

Only the keys the bench needs are resolved (``image_size``, ``mean``, ``std``, ``net._target_``,
``net.name``); the rest of the file (``net.image_size: ${data.image_size}`` and other interpolations into
the composed config) is left alone, so a model config reads on its own without Hydra.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from pneumo.models.seed_cnn import SeedCNN
from pneumo.paths import CONFIG_DIR

SEED_CNN_TARGET = "pneumo.models.seed_cnn.SeedCNN"
BACKBONE_TARGET = "pneumo.models.backbones.PretrainedClassifier"


def model_choices(config_dir: Path = CONFIG_DIR) -> list[str]:
    """The names `--model` accepts: the configs in `config_dir/model`."""
    return sorted(p.stem for p in (config_dir / "model").glob("*.yaml"))


@dataclass
class ModelSpec:
    """A model config's name and input (conf/model/<name>.yaml): what the bench trains and at what size.

    `backbone` is the torchvision/timm backbone's name for a `PretrainedClassifier`, None for the seed CNN.
    """

    name: str
    image_size: int
    mean: list[float] | None
    std: list[float] | None
    backbone: str | None = None

    @classmethod
    def read(cls, name: str, config_dir: Path = CONFIG_DIR) -> "ModelSpec":
        """`config_dir/model/<name>.yaml`; SystemExit with the choices when there is no such config, and with
        the file and key when it lacks what the bench needs."""
        path = config_dir / "model" / f"{name}.yaml"
        if not path.is_file():
            raise SystemExit(f"--model {name}: no {path.name} in conf/model; "
                             f"choose one of {', '.join(model_choices(config_dir))}")
        try:
            config = OmegaConf.load(path)
            image_size = int(_value(config, "image_size"))
            mean, std = _floats(config, "mean"), _floats(config, "std")
            target = OmegaConf.select(config, "net._target_")
            backbone = OmegaConf.select(config, "net.name", default=name) if target != SEED_CNN_TARGET else None
        except (OmegaConfBaseException, KeyError, TypeError, ValueError) as error:
            raise SystemExit(f"--model {name}: {path} cannot be read for the bench: {error}") from None
        if target not in (SEED_CNN_TARGET, BACKBONE_TARGET):
            raise SystemExit(f"--model {name}: {path} builds net._target_={target}; the bench trains "
                             f"{SEED_CNN_TARGET} or {BACKBONE_TARGET} only")
        return cls(name, image_size, mean, std, backbone)

    def build(self, image_size: int) -> nn.Module:
        """The network, untrained: speed does not depend on the weights, and nothing is downloaded."""
        if self.backbone is None:
            return SeedCNN(image_size)
        from pneumo.models.backbones import PretrainedClassifier  # torchvision/timm: only when asked for

        return PretrainedClassifier(self.backbone, pretrained=False)


def _value(config: Any, key: str) -> Any:
    """One top-level key, resolved; KeyError when it is missing."""
    if key not in config:
        raise KeyError(f"no '{key}' key")
    return OmegaConf.select(config, key, throw_on_resolution_failure=True)


def _floats(config: Any, key: str) -> list[float] | None:
    """A list of numbers (a normalisation's mean or std), None when the key is null or absent."""
    value = OmegaConf.select(config, key, default=None)
    if value is None:
        return None
    return [float(v) for v in OmegaConf.to_container(value, resolve=True)]
