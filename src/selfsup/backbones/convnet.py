"""A small, fast VGG-style convnet for CPU-scale experiments.

Four conv-BN-ReLU stages (widths 32-64-128-256 times ``width``), each halving the resolution after
the first; global average pooling. About 0.4M parameters at width 1: on 2 CPU cores it trains
several times faster than ResNet-18 at 32 px, which makes seeds x ablations affordable.
"""

from __future__ import annotations

import torch
from torch import nn

from . import BACKBONES


class ConvNet(nn.Module):
    def __init__(self, width: float = 1.0, cifar_stem: bool = True, in_channels: int = 3):
        super().__init__()
        # cifar_stem is accepted for a uniform interface; this net is built for small images.
        chans = [max(8, int(round(c * width))) for c in (32, 64, 128, 256)]
        layers, cin = [], in_channels
        for i, c in enumerate(chans):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed_dim = cin
        self.map_stride = 8          # forward_map's downsampling factor

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map [B, embed_dim, H/8, W/8] before pooling."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


@BACKBONES.register("convnet")
def convnet(width: float = 1.0, cifar_stem: bool = True, in_channels: int = 3) -> ConvNet:
    return ConvNet(width, cifar_stem, in_channels)
