"""Masking and reconstruction losses as pure functions (MAE, denoising autoencoders, VAE)."""

from __future__ import annotations

import torch


def random_masking(batch: int, n: int, mask_ratio: float, device=None,
                   generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample masking (He et al., 2021, ``random_masking``): shuffle the n patch
    indices of each image by argsort of uniform noise and keep the first n_keep =
    int(n (1 - mask_ratio)). Returns (keep [B, n_keep] indices, mask [B, n] with 1 = masked,
    restore [B, n]: the argsort that undoes the shuffle)."""
    n_keep = int(n * (1 - mask_ratio))
    noise = torch.rand(batch, n, generator=generator).to(device)
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    keep = shuffle[:, :n_keep]
    mask = torch.ones(batch, n, device=device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, restore)        # back to the patches' own order
    return keep, mask, restore


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), p*p*C], patches in raster order, each patch's pixels
    row-major with channels last (MAE's layout)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(t: torch.Tensor, p: int, c: int = 3) -> torch.Tensor:
    """The inverse of ``patchify`` for square images."""
    b, n, _ = t.shape
    g = int(round(n ** 0.5))
    x = t.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, g * p, g * p)


def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     norm_pix: bool = True) -> torch.Tensor:
    """MAE's loss (``forward_loss``): per-patch mean squared error, averaged over the masked
    patches only. pred, target [B, n, P]; mask [B, n] (1 = masked). With ``norm_pix`` each target
    patch is normalised by its own mean and variance (+1e-6)."""
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per sample, summed over latent dimensions
    (Kingma & Welling, 2014, App. B): -1/2 sum(1 + logvar - mu^2 - exp(logvar)). [B, d] -> [B]."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
