"""Losses of the synthetic-imagery multitask pretext (Ren & Lee, CVPR 2018), as pure functions,
following the official code (jason718/game-feature-learning ``src/model.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def depth_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred, target [B, 1, H, W] -> scalar: 0.5 (MSE + 0.5 (mean difference)^2), the mean taken
    over every pixel of the batch (the official ``loss_depth1`` + ``loss_depth2``)."""
    diff = pred - target
    return 0.5 * ((diff ** 2).mean() + 0.5 * diff.mean() ** 2)


def normal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred [B, 3, H, W] (any length), target [B, 3, H, W] unit normals -> scalar mean over
    pixels of 1 - cos(pred, target) (a cosine embedding loss with every pair similar)."""
    return (1 - F.cosine_similarity(pred, target, dim=1, eps=1e-8)).mean()


def contour_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits, target [B, 1, H, W] (target 0/1) -> scalar: binary cross-entropy whose every pixel
    of image b is weighted by (H W - E_b) / E_b, E_b that image's contour pixels (at least 1):
    the official code's per-image balance (``weight_e``), which raises images with few contours."""
    hw = target.shape[-1] * target.shape[-2]
    e = target.flatten(1).sum(1).clamp_min(1)
    w = ((hw - e) / e).view(-1, 1, 1, 1)
    return (w * F.binary_cross_entropy_with_logits(logits, target, reduction="none")).mean()


def gan_bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """The vanilla GAN loss on discriminator logits [N]: BCE against all-ones (``real``) or
    all-zeros."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))
