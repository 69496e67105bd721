"""Masking and reconstruction losses as pure functions (MAE, denoising autoencoders, VAE, the
joint image-and-label VAE of generative semi-supervised segmentation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def bernoulli_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) of [0, 1] images under independent Bernoulli pixels with these logits, summed
    over channels and pixels: [B, C, H, W] -> [B] (the VAE's reconstruction term)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


def gaussian_nll(mean: torch.Tensor, target: torch.Tensor, sigma: float) -> torch.Tensor:
    """-log p(x|z) of images under independent Gaussian pixels N(mean, sigma^2), summed over
    channels and pixels, without the constant D/2 log(2 pi sigma^2) (it has no gradient):
    [B, C, H, W] -> [B] = sum (x - mean)^2 / (2 sigma^2)."""
    return (mean - target).pow(2).flatten(1).sum(1) / (2 * sigma * sigma)


def label_map_nll(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """-log p(y|z) of a label map under independent categorical pixels: logits [B, K, H, W], mask
    [B, H, W] class indices (``ignore_index``: no label there) -> [B], summed over pixels."""
    nll = F.cross_entropy(logits, mask.clamp_min(0), reduction="none")
    return (nll * (mask != ignore_index)).flatten(1).sum(1)


def image_nll(image_logits: torch.Tensor, image: torch.Tensor,
              pixel_sigma: float | None = None) -> torch.Tensor:
    """-log p(x|z) [B] of [0, 1] images given the decoder's logits: Bernoulli pixels when
    ``pixel_sigma`` is None, else Gaussian pixels with mean sigmoid(logits) and that std."""
    if pixel_sigma is None:
        return bernoulli_nll(image_logits, image)
    return gaussian_nll(torch.sigmoid(image_logits), image, pixel_sigma)


def joint_negative_elbo(image_logits: torch.Tensor, image: torch.Tensor, mu: torch.Tensor,
                        logvar: torch.Tensor, beta: float = 1.0,
                        label_logits: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                        label_weight: float = 1.0, pixel_sigma: float | None = None
                        ) -> torch.Tensor:
    """The negative evidence lower bound of an image (and, when ``mask`` is given, its label map)
    under a latent-variable model p(z) p(x|z) p(y|z) with q(z|x) = N(mu, exp(logvar)), per
    sample [B]: -log p(x|z) + label_weight * -log p(y|z) + beta * KL(q(z|x) || N(0, I)). With one
    reparameterised z per sample this is the single-sample estimate (Kingma & Welling, 2014).
    p(x|z): ``image_nll`` (Bernoulli, or Gaussian with std ``pixel_sigma``)."""
    loss = image_nll(image_logits, image, pixel_sigma) + beta * gaussian_kl(mu, logvar)
    if mask is not None:
        loss = loss + label_weight * label_map_nll(label_logits, mask)
    return loss
