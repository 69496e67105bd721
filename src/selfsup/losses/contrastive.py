"""Contrastive losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross entropy of SimCLR (Chen et al., 2020, Eq. 1).

    z1, z2: [N, D] projections of two views of the same N images (row i of z1 and z2 are a positive
    pair). All 2N projections are l2-normalised; each of the 2N anchors is classified against its
    positive among the 2N-1 others (so 2N-2 negatives), with cosine similarity / temperature as
    logits. Returns the mean over the 2N anchors (a scalar).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be [N, D]; got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)  # [2N, D]
    logits = z @ z.t() / temperature  # [2N, 2N]
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # an anchor is never its own negative
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)  # i <-> i+N
    return F.cross_entropy(logits, targets)
