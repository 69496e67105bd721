"""BYOL: Bootstrap Your Own Latent (Grill et al., 2020).

Defining idea: an online network predicts a slowly moving average of itself (the target) on
another view; the predictor and the momentum target prevent collapse without negatives.

Algorithm (paper, Sec. 3.1 and Alg. 1), per minibatch:
    z1, z2   = g(f(v1)), g(f(v2))                    # online projections
    p1, p2   = q(z1), q(z2)                          # online predictions
    z1', z2' = g'(f'(v1)), g'(f'(v2)), no gradient   # target projections
    loss     = mean(2 - 2 cos(p1, z2')) + mean(2 - 2 cos(p2, z1'))   # symmetric
    after the update: f', g' <- tau f', g' + (1 - tau) f, g with tau = 1 - (1 - 0.996)(cos(pi p) + 1)/2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..augment import ViewAugment, ViewConfig
from ..heads.mlp import projection_head
from ..losses import byol_loss
from ..nn.ema import cosine_momentum, ema_update, frozen_copy
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class BYOLConfig:
    hidden_dim: int = 4096
    out_dim: int = 256
    base_momentum: float = 0.996


@METHODS.register("byol")
class BYOL(Method):
    Config = BYOLConfig
    sync_bn = True   # the paper syncs BatchNorm across devices

    def __init__(self, backbone: nn.Module, cfg: BYOLConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or BYOLConfig()
        self.backbone = backbone
        self.projector = projection_head(backbone.embed_dim, cfg.hidden_dim, cfg.out_dim)
        self.predictor = projection_head(cfg.out_dim, cfg.hidden_dim, cfg.out_dim)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.augment = ViewAugment(view_cfg or ViewConfig())

    def views(self, images):
        return [self.augment(images), self.augment(images)]

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        x = torch.cat(views)                                  # [2N, C, H, W]
        n = views[0].shape[0]
        z = self.projector(self.backbone(x))
        p = self.predictor(z)
        with torch.no_grad():
            zt = self.target_projector(self.target_backbone(x))
        loss = byol_loss(p[:n], zt[n:]) + byol_loss(p[n:], zt[:n])
        return StepOutput(loss, {"loss": loss.item(), "momentum": cosine_momentum(
            progress, self.cfg.base_momentum)}, embeddings=z[:n].detach())

    def after_optimizer_step(self, progress: float) -> None:
        tau = cosine_momentum(progress, self.cfg.base_momentum)
        ema_update(self.target_backbone, self.backbone, tau)
        ema_update(self.target_projector, self.projector, tau)

    @property
    def encoder(self):
        return self.backbone
