"""Momentum (EMA) targets: BYOL, MoCo, DINO."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_momentum(progress: float, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's schedule (Grill et al., 2020, Sec. 3.2): tau = 1 - (1 - base) (cos(pi p) + 1) / 2,
    rising from ``base`` at progress 0 to ``final`` at progress 1."""
    p = min(max(progress, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * p) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float,
               average_buffers: bool = False) -> None:
    """target <- momentum * target + (1 - momentum) * online, for parameters; buffers (BN running
    statistics) are copied, or averaged the same way with ``average_buffers`` (EMAN, Cai et al.,
    2021: the teacher's normalisation statistics then match its averaged weights; integer
    buffers such as ``num_batches_tracked`` are still copied)."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        if average_buffers and t.is_floating_point():
            t.mul_(momentum).add_(o, alpha=1 - momentum)
        else:
            t.copy_(o)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off: a target network updated only by ``ema_update``."""
    import copy

    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target
