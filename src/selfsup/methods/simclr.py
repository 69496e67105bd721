"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations (Chen et al., 2020).

Defining idea: two random views of each image are pulled together and pushed away from the other
2N-2 views in the batch, through a nonlinear projection head, with the NT-Xent loss.

Algorithm (paper, Algorithm 1), per minibatch of N images:
    x1, x2 = t(x), t'(x)                      # two views (crop + flip + colour jitter + grayscale)
    h1, h2 = f(x1), f(x2)                     # encoder (backbone) features, used downstream
    z1, z2 = g(h1), g(h2)                     # projection head
    loss = NT-Xent(z1, z2; temperature)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..augment import ViewAugment, ViewConfig
from ..heads.mlp import head_out_dim, projection_head
from ..losses import nt_xent
from ..nn.distributed import gather_with_grad
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class SimCLRConfig:
    temperature: float = 0.1      # google-research/simclr default; its CIFAR recipe uses 0.5
    head: str = "mlp"             # mlp | linear | none  (paper Fig. 8: mlp > linear > none)
    head_hidden_dim: int = 0      # 0 = the backbone's feature dimension, as in the paper
    head_out_dim: int = 128


@METHODS.register("simclr")
class SimCLR(Method):
    Config = SimCLRConfig
    sync_bn = True   # the paper syncs BatchNorm across devices

    def __init__(self, backbone: nn.Module, cfg: SimCLRConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SimCLRConfig()
        self.backbone = backbone
        d = backbone.embed_dim
        self.head = projection_head(d, cfg.head_hidden_dim or d, cfg.head_out_dim, kind=cfg.head)
        self.out_dim = head_out_dim(cfg.head, d, cfg.head_out_dim)
        self.augment = ViewAugment(view_cfg or ViewConfig())

    def views(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.augment(images), self.augment(images)]

    def training_step(self, views: list[torch.Tensor], progress: float,
                      batch: BatchInfo | None = None) -> StepOutput:
        x1, x2 = views
        n = x1.shape[0]
        h = self.backbone(torch.cat([x1, x2]))     # one pass: BN sees both views, [2N, D]
        z = self.head(h)                            # [2N, out_dim]
        z1, z2 = z[:n], z[n:]
        # negatives come from every process (identity in a single process)
        loss = nt_xent(gather_with_grad(z1), gather_with_grad(z2), self.cfg.temperature)
        return StepOutput(loss, {"loss": loss.item()}, embeddings=z1.detach())

    @property
    def encoder(self) -> nn.Module:
        return self.backbone
