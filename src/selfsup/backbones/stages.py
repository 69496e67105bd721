"""Features from an intermediate stage of a convolutional backbone.

Pretext tasks learn their best features before the last layers (RotNet: the 2nd of 4 blocks;
iGPT and relative position: middle layers), which specialise in the pretext task. ``StageEncoder``
runs a backbone up to stage k and average-pools: ``forward(x) -> [B, C_k]``.
"""

from __future__ import annotations

import torch
from torch import nn

from .convnet import ConvNet
from .resnet import ResNet
from .wideresnet import WideResNet


def stage_modules(backbone: nn.Module) -> list[nn.Module]:
    """The backbone as a list of stages applied in order (the last one ends at the features
    ``forward_map`` returns)."""
    if isinstance(backbone, ConvNet):
        layers = list(backbone.features)
        out, cur = [], []
        for m in layers:
            cur.append(m)
            if isinstance(m, nn.ReLU):
                out.append(nn.Sequential(*cur))
                cur = []
        return out
    if isinstance(backbone, ResNet):
        return [nn.Sequential(backbone.stem, backbone.stages[0]), *list(backbone.stages)[1:]]
    if isinstance(backbone, WideResNet):
        blocks = list(backbone.blocks)
        g = len(blocks) // 3
        return [nn.Sequential(backbone.stem, *blocks[:g]), nn.Sequential(*blocks[g:2 * g]),
                nn.Sequential(*blocks[2 * g:], backbone.bn, backbone.act)]
    raise ValueError(f"{type(backbone).__name__} has no stage list (convnet, resnet and wrn do)")


class StageEncoder(nn.Module):
    """Backbone stages 1..k (1-based; k = number of stages gives the usual features), pooled."""

    def __init__(self, backbone: nn.Module, stage: int):
        super().__init__()
        stages = stage_modules(backbone)
        if not 1 <= stage <= len(stages):
            raise ValueError(f"stage must be in 1..{len(stages)}, got {stage}")
        self.stages = nn.Sequential(*stages[:stage])
        self.pool = nn.AdaptiveAvgPool2d(1)
        convs = [m for m in self.stages.modules() if isinstance(m, nn.Conv2d)]
        self.embed_dim = convs[-1].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(x)), 1)
