"""A convolutional decoder from a backbone's feature map back to image resolution, shared by the
dense pretext tasks (autoencoders, VAE, inpainting, colorization)."""

from __future__ import annotations

import math

import torch
from torch import nn


class ConvDecoder(nn.Module):
    """[B, in_channels, h, w] -> [B, out_channels, h * scale, w * scale]: ``log2(scale)`` stages
    of (nearest x2 upsampling, 3x3 conv, BN, ReLU) halving the channels (at least ``min_channels``),
    then a 3x3 conv to ``out_channels`` (no activation: the method chooses it)."""

    def __init__(self, in_channels: int, out_channels: int, scale: int, hidden: int = 0,
                 min_channels: int = 32):
        super().__init__()
        n = int(round(math.log2(scale))) if scale > 1 else 0
        if 2 ** n != scale:
            raise ValueError(f"decoder scale must be a power of two, got {scale}")
        c = hidden or in_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 1)] if c != in_channels else []
        for _ in range(n):
            c_out = max(min_channels, c // 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c = c_out
        layers.append(nn.Conv2d(c, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
