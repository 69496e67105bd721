"""Clustering / self-distillation losses: SwAV, DINO, DeepCluster-v2. Pure functions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._precision import at_least_float32

from ..nn.distributed import all_reduce_sum, world_size


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp codes (SwAV, Caron et al., 2020, Sec. 3.1 and Alg. 1).

    scores: [B, K] prototype scores. Returns Q [B, K], each row a distribution over prototypes
    (rows sum to 1), with prototypes used equally: columns sum to B/K after the final row step
    up to the last iteration's residual (exact at convergence)."""
    q = torch.exp(at_least_float32(scores) / epsilon).t()      # [K, B]
    # under torch.distributed the batch is every rank's: the prototype (row) sums and the total
    # are all-reduced, as the official distributed_sinkhorn does (identity in one process)
    q /= all_reduce_sum(q.sum())
    k = q.shape[0]
    b = q.shape[1] * world_size()
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))  # each prototype gets total mass 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True)              # each sample gets total mass 1/B
        q /= b
    return (q * b).t()                               # rows sum to 1


def _cross_view_ce(targets: list[torch.Tensor], logits: list[torch.Tensor],
                   temperature: float) -> torch.Tensor:
    """Mean over pairs (target view i, predicting view j != i) of the cross-entropy
    -sum_k target_i[k] log softmax(logits_j / temperature)[k], averaged over the batch.
    Target views are the first len(targets) views of ``logits``."""
    total, pairs = 0.0, 0
    for i, t in enumerate(targets):
        for j, s in enumerate(logits):
            if j != i:
                logp = F.log_softmax(at_least_float32(s) / temperature, dim=1)
                total = total - (t * logp).sum(1).mean()
                pairs += 1
    return total / pairs


def swav_loss(scores: list[torch.Tensor], codes: list[torch.Tensor],
              temperature: float = 0.1) -> torch.Tensor:
    """Swapped prediction (SwAV Eq. 3). scores: per crop [B, K] prototype scores (the first
    len(codes) crops are the global ones), codes: per global crop [B, K] Sinkhorn targets.
    For each global crop i, every other crop predicts q_i: -sum q_i log softmax(s / t).
    Averaged over (i, other crop) pairs."""
    return _cross_view_ce(codes, scores, temperature)


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """DINO (Caron et al., 2021, Alg. 1). student: per crop [B, K] logits (globals first),
    teacher: per global crop [B, K] logits, center: [K]. Targets softmax((t - center) / tt);
    cross-entropy with log_softmax(s / ts) over all (teacher i, student j != i) pairs, averaged."""
    targets = [F.softmax((at_least_float32(t) - center) / teacher_temp, dim=1).detach()
               for t in teacher]
    return _cross_view_ce(targets, student, student_temp)


@torch.no_grad()
def target_diagnostics(teacher: torch.Tensor, center: torch.Tensor, teacher_temp: float
                       ) -> dict[str, float]:
    """What DINO's targets look like, for telling its two collapse modes apart (teacher: [B, K]
    logits). ``target_entropy``: mean entropy of one image's target / log K (1 = uniform: the
    centring won); ``batch_entropy``: entropy of the batch-mean target / log K (near 0: every
    image gets the same prototype: the sharpening won); healthy is low per image, high for the
    batch. ``logit_spread``: std over images of the centred teacher logits, averaged over the K
    outputs, in units of the teacher temperature (small: every image gets the same target)."""
    z = (at_least_float32(teacher) - center) / teacher_temp
    p = F.softmax(z, dim=1)
    log_k = math.log(p.shape[1])
    h_img = -(p * F.log_softmax(z, dim=1)).sum(1).mean() / log_k
    q = p.mean(0)
    h_batch = -(q * q.clamp_min(1e-12).log()).sum() / log_k
    return {"target_entropy": float(h_img), "batch_entropy": float(h_batch),
            "logit_spread": float(z.std(0).mean())}


@torch.no_grad()
def dino_center(center: torch.Tensor, teacher: list[torch.Tensor],
                momentum: float = 0.9) -> torch.Tensor:
    """The new centre: EMA of the mean teacher output over the batch (DINO Alg. 1)."""
    batch_center = torch.cat([at_least_float32(t) for t in teacher]).mean(0)
    return center * momentum + batch_center * (1 - momentum)


def selfpatch_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
                   student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """The patch term for one view: student / teacher patch logits [B, n, K], centre [K];
    mean over images and patches of CE(softmax((t - C) / tt), log_softmax(s / ts))."""
    target = F.softmax((at_least_float32(teacher) - center) / teacher_temp, dim=-1).detach()
    logp = F.log_softmax(at_least_float32(student) / student_temp, dim=-1)
    return -(target * logp).sum(-1).mean()
