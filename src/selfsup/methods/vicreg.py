"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce, LeCun, 2022).

Defining idea: avoid collapse with two explicit regularisers on each branch's embeddings: keep
every dimension's std above 1 (variance) and decorrelate dimensions (covariance), while pulling
the two views together (invariance).

Algorithm (paper, Sec. 3): z, z' = h(f(x)), h(f(x'))   # expander 8192-8192-8192
    loss = 25 * s(z, z') + 25 * [v(z) + v(z')] / 2 + 1 * [c(z) + c(z')]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..augment import ViewAugment, ViewConfig
from ..heads.mlp import projection_head
from ..losses import vicreg_loss
from ..nn.distributed import gather_with_grad
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class VICRegConfig:
    proj_dim: int = 8192
    proj_layers: int = 3
    sim_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0


@METHODS.register("vicreg")
class VICReg(Method):
    Config = VICRegConfig
    sync_bn = True   # the paper syncs BatchNorm across devices

    def __init__(self, backbone: nn.Module, cfg: VICRegConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or VICRegConfig()
        self.backbone = backbone
        self.projector = projection_head(backbone.embed_dim, cfg.proj_dim, cfg.proj_dim,
                                         num_layers=cfg.proj_layers)
        self.augment = ViewAugment(view_cfg or ViewConfig())

    def views(self, images):
        return [self.augment(images), self.augment(images)]

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        n = views[0].shape[0]
        z = self.projector(self.backbone(torch.cat(views)))
        c = self.cfg
        loss, terms = vicreg_loss(gather_with_grad(z[:n]), gather_with_grad(z[n:]),
                                  c.sim_weight, c.var_weight, c.cov_weight)
        return StepOutput(loss, {"loss": loss.item(), **terms}, embeddings=z[:n].detach())

    @property
    def encoder(self):
        return self.backbone
