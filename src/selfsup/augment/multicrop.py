"""Multi-crop views (SwAV, Caron et al., 2020, Sec. 3.2): 2 global crops at full resolution plus
k small local crops covering little of the image, all with the method's colour augmentation."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .views import ViewAugment, ViewConfig


class MultiCrop(nn.Module):
    def __init__(self, base: ViewConfig, n_local: int, local_size: int,
                 global_scale: tuple[float, float], local_scale: tuple[float, float]):
        super().__init__()
        self.n_local = n_local
        self.global_aug = ViewAugment(dataclasses.replace(
            base, scale_min=global_scale[0], scale_max=global_scale[1]))
        self.local_aug = ViewAugment(dataclasses.replace(
            base, size=local_size, scale_min=local_scale[0], scale_max=local_scale[1],
            crop=True)) if n_local > 0 else None

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        views = [self.global_aug(images), self.global_aug(images)]
        views += [self.local_aug(images) for _ in range(self.n_local)]
        return views


def local_size_for(global_size: int, multiple: int = 2) -> int:
    """96/224 of the global side (SwAV/DINO ImageNet ratio), at least 8 px, a multiple of
    ``multiple`` (2: even; a ViT's patch size, so that local crops tile into whole patches)."""
    m = max(2, multiple)
    return max(8 if m <= 8 else m, int(round(global_size * 96 / 224 / m)) * m)
