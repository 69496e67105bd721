"""Wide ResNet (Zagoruyko & Komodakis, 2016) as the semi-supervised literature uses it.

WRN-28-k: 3 groups of 4 pre-activation basic blocks, widths 16k-32k-64k, strides 1-2-2. The
FixMatch variant (google-research/fixmatch ``libml/models.py``): LeakyReLU(0.1) and BatchNorm
momentum 0.001 in PyTorch terms (TF's 0.999). WRN-28-2 has 1.47M parameters (CIFAR-10/SVHN);
WRN-28-8 is the CIFAR-100 network. ``drop_path`` enables stochastic depth on the residual
branches (Huang et al., 2016), the model noise Noisy Student adds to its students.
"""

from __future__ import annotations

import torch
from torch import nn

from . import BACKBONES


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=0.001)


class WideBasic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, activate_before_residual: bool = False):
        super().__init__()
        self.bn1, self.act1 = _bn(cin), nn.LeakyReLU(0.1, inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.act2 = _bn(cout), nn.LeakyReLU(0.1, inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride,
                                                                          bias=False)
        self.activate_before_residual = activate_before_residual
        self.drop_path = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act1(self.bn1(x))
        if self.shortcut is not None or self.activate_before_residual:
            x = o  # the shortcut sees the pre-activated input (official WRN code)
        out = self.conv2(self.act2(self.bn2(self.conv1(o))))
        if self.training and self.drop_path > 0:
            keep = torch.rand(out.shape[0], 1, 1, 1, device=out.device) >= self.drop_path
            out = out * keep.to(out.dtype) / (1 - self.drop_path)
        return (x if self.shortcut is None else self.shortcut(x)) + out


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen: float = 2.0, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        chans = [16, int(round(16 * widen)), int(round(32 * widen)), int(round(64 * widen))]
        self.stem = nn.Conv2d(in_channels, chans[0], 3, 1, 1, bias=False)
        blocks, cin = [], chans[0]
        for g, (c, s) in enumerate(zip(chans[1:], (1, 2, 2))):
            for i in range(n):
                blocks.append(WideBasic(cin, c, s if i == 0 else 1,
                                        activate_before_residual=(g == 0 and i == 0)))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.bn, self.act = _bn(cin), nn.LeakyReLU(0.1, inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed_dim = cin
        self.map_stride = 4
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth: block i of L drops its residual branch with prob rate * (i+1) / L
        (the linear decay rule of Huang et al., 2016)."""
        blocks = list(self.blocks)
        for i, b in enumerate(blocks):
            b.drop_path = rate * (i + 1) / len(blocks)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map [B, embed_dim, H/4, W/4] before pooling."""
        return self.act(self.bn(self.blocks(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.forward_map(x)), 1)


@BACKBONES.register("wrn28_2")
def wrn28_2(width: float = 1.0, cifar_stem: bool = True, in_channels: int = 3) -> WideResNet:
    """WRN-28-2; ``width`` multiplies the widening factor 2 (width 0.5 -> WRN-28-1)."""
    return WideResNet(28, 2.0 * width, in_channels)


@BACKBONES.register("wrn28_8")
def wrn28_8(width: float = 1.0, cifar_stem: bool = True, in_channels: int = 3) -> WideResNet:
    return WideResNet(28, 8.0 * width, in_channels)
