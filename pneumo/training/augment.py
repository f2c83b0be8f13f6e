"""Augmentation from one strength knob, drawn per sample and applied to whole batches.

The seed's Keras pipeline at strength 1: RandomFlip("horizontal"), RandomRotation(0.15) (0.15 of a
full turn, ±54°), RandomZoom(0.2) (±20%), RandomContrast(0.3) (factor in [0.7, 1.3]); Keras fills
rotated and zoomed borders by reflection. Every range is multiplied by `strength`; 0 is the identity.

Why not torchvision.transforms.v2 on the batch: v2 draws ONE set of random parameters per call, so a
batch would be rotated as a block. Here each sample gets its own angle, zoom, flip and contrast, and
flip+rotation+zoom are folded into one affine matrix per sample, so one `grid_sample` resamples the
batch once (no double blur) on whatever device the batch lives on (the GPU when training there).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchAugment(nn.Module):
    """Per-sample random flip, rotation, zoom and contrast for a float batch in [0, 1] (B, C, H, W)."""

    def __init__(self, strength: float = 1.0, flip_p: float = 0.5, rotation_deg: float = 54.0,
                 zoom: float = 0.2, contrast: float = 0.3, mixup_alpha: float = 0.0, mix_mode: str = "mixup") -> None:
        super().__init__()
        if strength < 0:
            raise ValueError(f"augment.strength={strength} must be >= 0 (0 turns augmentation off)")
        if mixup_alpha < 0 or mix_mode not in ("mixup", "cutmix"):
            raise ValueError(f"augment.mixup_alpha={mixup_alpha} must be >= 0 (0 = off) and augment.mix_mode="
                             f"{mix_mode!r} one of 'mixup', 'cutmix'")
        self.mixup_alpha, self.mix_mode = float(mixup_alpha), mix_mode
        self.strength = float(strength)
        # A probability cannot grow past its seed value; the ranges scale freely (clamped to stay valid).
        self.flip_p = flip_p * min(self.strength, 1.0)
        self.max_angle = math.radians(rotation_deg * self.strength)
        self.zoom = min(zoom * self.strength, 0.9)
        self.contrast = min(contrast * self.strength, 1.0)

    @property
    def is_identity(self) -> bool:
        return self.strength == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return x
        x = self._geometry(x)
        return self._contrast(x)

    def _uniform(self, n: int, half_range: float, device: torch.device) -> torch.Tensor:
        return (torch.rand(n, device=device) * 2 - 1) * half_range

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        angle = self._uniform(n, self.max_angle, x.device)
        # Sampling scale: >1 reads a larger input area (zoom out), <1 a smaller one (zoom in).
        scale = 1 + self._uniform(n, self.zoom, x.device)
        flip = torch.where(torch.rand(n, device=x.device) < self.flip_p, -1.0, 1.0)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        zeros = torch.zeros_like(cos)
        # Row-major 2x3 matrices mapping output coordinates to input ones; the flip negates input x.
        theta = torch.stack([torch.stack([cos * flip, -sin * flip, zeros], 1),
                             torch.stack([sin, cos, zeros], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _contrast(self, x: torch.Tensor) -> torch.Tensor:
        if self.contrast == 0:
            return x
        factor = 1 + self._uniform(x.shape[0], self.contrast, x.device).to(x.dtype).view(-1, 1, 1, 1)
        mean = x.mean(dim=(2, 3), keepdim=True)  # per image and channel, as Keras RandomContrast
        return ((x - mean) * factor + mean).clamp_(0, 1)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup or CutMix with a partner drawn by permuting the batch; targets become soft labels
        (BCE takes them as they are). One mixing weight per batch, from Beta(alpha, alpha)."""
        if self.mixup_alpha == 0 or len(y) < 2:
            return x, y
        lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
        partner = torch.randperm(len(y), device=x.device)
        if self.mix_mode == "mixup":
            return lam * x + (1 - lam) * x[partner], lam * y + (1 - lam) * y[partner]
        height, width = x.shape[-2:]
        cut_h, cut_w = round(height * math.sqrt(1 - lam)), round(width * math.sqrt(1 - lam))
        top = int(torch.randint(0, height - cut_h + 1, (1,)))
        left = int(torch.randint(0, width - cut_w + 1, (1,)))
        mixed = x.clone()
        mixed[..., top:top + cut_h, left:left + cut_w] = x[partner][..., top:top + cut_h, left:left + cut_w]
        kept = 1 - cut_h * cut_w / (height * width)  # the label follows the area actually pasted
        return mixed, kept * y + (1 - kept) * y[partner]

    def extra_repr(self) -> str:
        return f"strength={self.strength}"
