"""Optimizers: SGD, LARS and AdamW, with no weight decay (and no LARS adaptation) on biases and
normalisation parameters, as in SimCLR (Chen et al., 2020, App. B.1)."""

from __future__ import annotations

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017) on SGD with momentum.

    For each parameter w with gradient g: g <- g + wd * w; if adapted, g <- g * eta*||w||/||g||
    (when both norms are positive); v <- momentum * v + g; w <- w - lr * v.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    w_norm, g_norm = torch.norm(p), torch.norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                    g = g.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and biases/norm parameters (neither)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lars": True},
            {"params": no_decay, "weight_decay": 0.0, "lars": False}]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, lars_eta: float = 0.001,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, eta=lars_eta)
    for g in groups:
        g.pop("lars")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer '{name}'; choose one of: adamw, lars, sgd")
