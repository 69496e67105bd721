"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction (Zbontar et al., 2021).

Defining idea: make the cross-correlation matrix of the two views' batch-normalised embeddings
close to the identity: invariance on the diagonal, decorrelated (non-redundant) features off it.

Algorithm (paper, Algorithm 1):
    z1, z2 = g(f(y1)), g(f(y2))              # projector 8192-8192-8192
    c = bn(z1).T @ bn(z2) / N                # [D, D] cross-correlation
    loss = sum_i (1 - c_ii)^2 + lambda * sum_{i != j} c_ij^2,  lambda = 0.0051
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..augment import ViewAugment, ViewConfig
from ..heads.mlp import projection_head
from ..losses import barlow_twins_loss
from ..nn.distributed import gather_with_grad
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class BarlowTwinsConfig:
    proj_dim: int = 8192
    proj_layers: int = 3
    lambd: float = 0.0051


@METHODS.register("barlow_twins")
class BarlowTwins(Method):
    Config = BarlowTwinsConfig
    sync_bn = True   # the paper syncs BatchNorm across devices

    def __init__(self, backbone: nn.Module, cfg: BarlowTwinsConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or BarlowTwinsConfig()
        self.backbone = backbone
        self.projector = projection_head(backbone.embed_dim, cfg.proj_dim, cfg.proj_dim,
                                         num_layers=cfg.proj_layers)
        self.augment = ViewAugment(view_cfg or ViewConfig())

    def views(self, images):
        return [self.augment(images), self.augment(images)]

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        n = views[0].shape[0]
        z = self.projector(self.backbone(torch.cat(views)))
        # the cross-correlation is over the global batch
        loss = barlow_twins_loss(gather_with_grad(z[:n]), gather_with_grad(z[n:]), self.cfg.lambd)
        return StepOutput(loss, {"loss": loss.item()}, embeddings=z[:n].detach())

    @property
    def encoder(self):
        return self.backbone
