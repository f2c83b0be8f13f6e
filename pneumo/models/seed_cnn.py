"""Network architectures. The baseline is the seed's Keras CNN, layer for layer."""
from __future__ import annotations

import torch
from torch import nn


class SeedCNN(nn.Module):
    """The seed's three-block CNN: 4,287,809 parameters at 128x128x3, like the Keras model.

    Conv 3x3 'same' + ReLU with 32, 64, 128 filters, each followed by 2x2 max-pool; Flatten;
    Dense 128 + tanh; Dropout; Dense 1. The sigmoid lives in the loss (BCEWithLogitsLoss), so the
    forward pass returns one logit per image.

    Flatten order differs from Keras: PyTorch flattens CHW, Keras HWC; importing Keras weights
    must permute the first dense layer's input dimension.
    """

    def __init__(self, image_size: int = 128, in_channels: int = 3, dropout: float = 0.3,
                 widths: tuple[int, ...] = (32, 64, 128), hidden: int = 128) -> None:
        super().__init__()
        if image_size % (2 ** len(widths)):
            raise ValueError(f"model.image_size={image_size} must be divisible by {2 ** len(widths)} "
                             f"(one 2x2 max-pool per block)")
        blocks: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            blocks += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*blocks)
        side = image_size // 2 ** len(widths)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, hidden),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )
        self.image_size = image_size

    @property
    def backbone(self) -> nn.Module:
        return self.features

    def backbone_parameters(self):
        """The convolutional blocks (what model.freeze_epochs freezes)."""
        return self.features.parameters()

    def head_parameters(self):
        return self.head.parameters()

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last conv layer: where Grad-CAM looks by default."""
        return [m for m in self.features if isinstance(m, nn.Conv2d)][-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
