"""Self-supervised label augmentation (Lee, Hwang & Shin, ICML 2020) as pure functions.

Conventions (hankook/SLA): M transformations t_0 (identity) .. t_{M-1}; the batch of copies is
transformation-major, ``x_all = cat([t_0(x), t_1(x), ..., t_{M-1}(x)])`` ([M*B, ...]); the joint
label space has N*M classes and the joint label of (class y, transformation k) is ``y*M + k``,
so the logits of transformation k over the N classes are the columns ``k::M``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .semisup import kd_loss


def joint_labels(y: torch.Tensor, m: int) -> torch.Tensor:
    """[B] class labels -> [M*B] joint labels y*M + k, transformation-major (k = 0 first)."""
    k = torch.arange(m, device=y.device).repeat_interleave(y.shape[0])
    return y.repeat(m) * m + k


def single_logits(joint: torch.Tensor, m: int) -> torch.Tensor:
    """SLA+SI: [B, N*M] joint logits of untransformed inputs -> [B, N] (the k = 0 block)."""
    return joint[:, 0::m]


def aggregated_logits(joint_all: torch.Tensor, m: int) -> torch.Tensor:
    """SLA+AG: [M*B, N*M] joint logits of every copy (transformation-major) -> [B, N], the
    average over k of copy k's logits restricted to its own block ``k::M`` (logits, not
    probabilities, as the official code)."""
    b = joint_all.shape[0] // m
    return torch.stack([joint_all[k * b:(k + 1) * b, k::m] for k in range(m)]).mean(0)


def transformation_logits(joint: torch.Tensor, m: int) -> torch.Tensor:
    """[B, N*M] -> [B, M]: log sum_y exp(joint[y*M + k]), the joint model's marginal over classes
    of each transformation (the auxiliary target for unlabeled images, whose class is unknown)."""
    return joint.view(joint.shape[0], -1, m).logsumexp(1)


def sla_loss(joint_all: torch.Tensor, y: torch.Tensor, m: int) -> torch.Tensor:
    """Cross-entropy over the joint labels, averaged over the M copies (the official default;
    ``--with-large-loss`` would multiply by M)."""
    return F.cross_entropy(joint_all, joint_labels(y, m))


def sla_sd_loss(joint_all: torch.Tensor, single_head: torch.Tensor, y: torch.Tensor, m: int,
                temperature: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SLA+SD: joint CE + CE of the single head on the untransformed copies + T^2 KL(aggregated
    (detached) || single). ``single_head``: [B, N] logits of the k = 0 copies."""
    parts = {"joint": sla_loss(joint_all, y, m),
             "single": F.cross_entropy(single_head, y),
             "distill": kd_loss(single_head, aggregated_logits(joint_all, m).detach(), temperature)}
    return parts["joint"] + parts["single"] + parts["distill"], parts
