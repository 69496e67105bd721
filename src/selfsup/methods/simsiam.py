"""SimSiam: Exploring Simple Siamese Representation Learning (Chen & He, 2021).

Defining idea: a siamese network with a predictor on one branch and a stop-gradient on the other
learns without negatives or momentum; without the stop-gradient it collapses (paper Fig. 2).

Algorithm (paper, Algorithm 1):
    z1, z2 = h(f(x1)), h(f(x2))             # projections (3-layer MLP, BN on the output)
    p1, p2 = q(z1), q(z2)                   # predictions (bottleneck MLP, 2048-512-2048)
    loss = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2,  D = negative cosine
``stop_gradient=False`` removes the stop-gradient so the collapse can be shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..augment import ViewAugment, ViewConfig
from ..heads.mlp import projection_head
from ..losses import negative_cosine
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class SimSiamConfig:
    proj_dim: int = 2048
    proj_layers: int = 3              # ImageNet; the paper's CIFAR variant uses 2
    pred_hidden_dim: int = 512
    stop_gradient: bool = True


@METHODS.register("simsiam")
class SimSiam(Method):
    Config = SimSiamConfig
    sync_bn = True   # the paper syncs BatchNorm across devices

    def __init__(self, backbone: nn.Module, cfg: SimSiamConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SimSiamConfig()
        self.backbone = backbone
        self.projector = projection_head(backbone.embed_dim, cfg.proj_dim, cfg.proj_dim,
                                         num_layers=cfg.proj_layers, last_bn=True)
        self.predictor = projection_head(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.augment = ViewAugment(view_cfg or ViewConfig())

    def views(self, images):
        return [self.augment(images), self.augment(images)]

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        n = views[0].shape[0]
        z = self.projector(self.backbone(torch.cat(views)))
        p = self.predictor(z)
        z1, z2, p1, p2 = z[:n], z[n:], p[:n], p[n:]
        if self.cfg.stop_gradient:
            z1, z2 = z1.detach(), z2.detach()
        loss = negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
        return StepOutput(loss, {"loss": loss.item()}, embeddings=z[:n].detach())

    @property
    def encoder(self):
        return self.backbone
