"""Input corruptions for denoising autoencoders (Vincent et al., 2008; 2010, Sec. 4.2).

Each takes images in [0, 1] [B, C, H, W] and returns (corrupted images, mask [B, 1, H, W] of the
pixels it changed: 1 = corrupted), so a loss can emphasise the corrupted part."""

from __future__ import annotations

import torch


def masking_noise(x: torch.Tensor, fraction: float, generator: torch.Generator | None = None):
    """Set a random ``fraction`` of the pixels (all channels of a pixel together) to 0."""
    m = (torch.rand(x.shape[0], 1, *x.shape[2:], generator=generator) < fraction).to(x)
    return x * (1 - m), m


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None):
    """Additive isotropic Gaussian noise of std ``sigma``, clipped to [0, 1]; every pixel changes."""
    n = torch.randn(x.shape, generator=generator).to(x) * sigma
    return (x + n).clamp(0, 1), torch.ones(x.shape[0], 1, *x.shape[2:], device=x.device)


def salt_and_pepper(x: torch.Tensor, fraction: float, generator: torch.Generator | None = None):
    """Set a random ``fraction`` of the pixels to 0 or 1 (a fair coin each)."""
    shape = (x.shape[0], 1, *x.shape[2:])
    m = (torch.rand(shape, generator=generator) < fraction).to(x)
    salt = (torch.rand(shape, generator=generator) < 0.5).to(x)
    return x * (1 - m) + salt * m, m


NOISES = {"masking": masking_noise, "gaussian": gaussian_noise, "salt_pepper": salt_and_pepper}
