"""Contrastive losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._precision import at_least_float32


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
    z = F.normalize(at_least_float32(torch.cat([z1, z2], dim=0)), dim=1)  # [2N, D]
    logits = z @ z.t() / temperature  # [2N, 2N]
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # an anchor is never its own negative
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)  # i <-> i+N
    return F.cross_entropy(logits, targets)


def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor,
             temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE (He et al., 2020, Eq. 1). q: [N, D] queries, k: [N, D] their positive keys,
    negatives: [K, D] (the queue). All are l2-normalised here. Logits per query: [q.k+, q.n_1..K]
    / temperature; the positive is class 0. Returns the mean over the N queries."""
    q = F.normalize(at_least_float32(q), dim=1)
    k = F.normalize(at_least_float32(k), dim=1)
    negatives = F.normalize(at_least_float32(negatives), dim=1)
    pos = (q * k).sum(1, keepdim=True)                       # [N, 1]
    neg = q @ negatives.t()                                  # [N, K]
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def supcon(features: torch.Tensor, labels: torch.Tensor | None = None, temperature: float = 0.1,
           base_temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss, L_out form (Khosla et al., 2020, Eq. 2).

    features: [N, V, D] (V views per sample), labels: [N] or None. Every one of the N*V
    embeddings is an anchor; its positives are the other embeddings with the same label (without
    labels: the other views of the same sample, which gives SimCLR's NT-Xent up to the
    temperature / base_temperature factor). The log-probability of each positive is averaged
    *outside* the log, then scaled by temperature / base_temperature as in HobbitLong/SupContrast.
    """
    n, v, _ = features.shape
    # view-major
    z = F.normalize(at_least_float32(features), dim=2).transpose(0, 1).reshape(n * v, -1)
    ids = labels if labels is not None else torch.arange(n, device=features.device)
    ids = ids.to(features.device).repeat(v)                                       # [N*V]
    logits = z @ z.t() / temperature
    self_mask = torch.eye(n * v, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (ids[:, None] == ids[None, :]) & ~self_mask
    n_pos = pos.sum(1).clamp(min=1)  # an anchor without positives contributes 0
    mean_log_prob_pos = log_prob.masked_fill(~pos, 0).sum(1) / n_pos
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()
