"""Losses of the non-contrastive joint-embedding methods. Pure functions; shapes in docstrings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._precision import at_least_float32


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -mean_i cos(p_i, z_i) (Chen & He, 2021, Eq. 1). p, z: [N, D].
    The caller decides on stop-gradient (SimSiam passes z.detach())."""
    return -F.cosine_similarity(at_least_float32(p), at_least_float32(z), dim=1).mean()


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised MSE (Grill et al., 2020, Eq. 2): mean_i ||p_i/|p_i| - z_i/|z_i|||^2
    = 2 - 2 cos(p_i, z_i). p: [N, D] online predictions, z: [N, D] target projections."""
    return (2 - 2 * F.cosine_similarity(at_least_float32(p), at_least_float32(z), dim=1)).mean()


def _batch_standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    # BatchNorm without affine parameters: zero mean, unit (biased) variance per dimension
    z = at_least_float32(z)
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """Barlow Twins (Zbontar et al., 2021, Eq. 1). z1, z2: [N, D]. C = z1n^T z2n / N with z
    batch-standardised; loss = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2."""
    n = z1.shape[0]
    c = _batch_standardize(z1).t() @ _batch_standardize(z2) / n  # [D, D]
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on + lambd * off


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0,
                var_weight: float = 25.0, cov_weight: float = 1.0, gamma: float = 1.0,
                eps: float = 1e-4) -> tuple[torch.Tensor, dict]:
    """VICReg (Bardes et al., 2022, Eqs. 1-6). z1, z2: [N, D].
    invariance s = mean squared distance; variance v = mean_j relu(gamma - sqrt(Var(z_j) + eps))
    per branch; covariance c = sum_{i != j} Cov(z)_ij^2 / D per branch.
    loss = sim_weight * s + var_weight * (v(z1) + v(z2)) / 2 + cov_weight * (c(z1) + c(z2)).
    The /2 on the variance term follows facebookresearch/vicreg's main_vicreg.py, which produced
    the published numbers with weights 25/25/1 (the paper's Eq. 6 writes the sum without it).
    Returns (loss, terms)."""
    z1, z2 = at_least_float32(z1), at_least_float32(z2)
    n, d = z1.shape
    inv = F.mse_loss(z1, z2, reduction="none").sum(1).mean() / d

    def variance(z):
        return F.relu(gamma - torch.sqrt(z.var(0) + eps)).mean()

    def covariance(z):
        zc = z - z.mean(0)
        cov = zc.t() @ zc / (n - 1)
        return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d

    var = (variance(z1) + variance(z2)) / 2
    cov = covariance(z1) + covariance(z2)
    loss = sim_weight * inv + var_weight * var + cov_weight * cov
    return loss, {"invariance": inv.item(), "variance": var.item(), "covariance": cov.item()}


def feature_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared distance between the L2-normalised student and teacher embeddings, averaged over
    the batch: ||s/|s| - t/|t|||^2 = 2 - 2 cos(s, t). The teacher is a fixed target (detached)."""
    s = F.normalize(at_least_float32(student), dim=1)
    t = F.normalize(at_least_float32(teacher.detach()), dim=1)
    return (s - t).pow(2).sum(1).mean()
