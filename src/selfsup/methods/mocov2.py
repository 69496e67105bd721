"""MoCo v2: Improved Baselines with Momentum Contrastive Learning (Chen, Fan, Girshick, He, 2020).

Defining idea: contrast each query against its key from a slowly moving (momentum) encoder and
against a large FIFO queue of past keys, so negatives need not come from the batch.

Algorithm (MoCo, He et al., 2020, Algorithm 1), per minibatch:
    q = normalize(g_q(f_q(x1)))                 # queries
    k = normalize(g_k(f_k(x2))), no gradient    # keys, key encoder with shuffled BN
    loss = InfoNCE(q, k, queue; temperature)    # positive: k; negatives: the queue
    after the update: f_k, g_k <- m f_k, g_k + (1 - m) f_q, g_q;  queue.push(k)
MoCo v2 adds the MLP head (no BN), blur augmentation and a cosine schedule; T = 0.2.

Shuffled BN on one device: the key batch is shuffled and forwarded in ``bn_splits`` groups (each
with its own BN statistics), as if on that many GPUs, and the query batch in the same number of
groups in order, so a query and its key never share batch statistics (the BN shortcut of Sec. 3.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..augment import ViewAugment, ViewConfig
from ..heads.mlp import projection_head
from ..losses import info_nce
from ..nn.distributed import gather_with_grad
from ..nn.ema import ema_update, frozen_copy
from ..nn.queue import MemoryQueue
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class MoCoV2Config:
    temperature: float = 0.2
    momentum: float = 0.999
    queue_size: int = 65536
    head_hidden_dim: int = 0          # 0 = the backbone's feature dimension (2048 for R50)
    head_out_dim: int = 128
    bn_splits: int = 8                # groups for shuffled BN on one device (1 = off)


def _forward_in_groups(net: nn.Module, x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups <= 1:
        return net(x)
    if x.shape[0] % groups:
        raise ValueError(f"batch size {x.shape[0]} is not divisible by method.bn_splits={groups}")
    return torch.cat([net(c) for c in x.chunk(groups)])


@METHODS.register("mocov2")
class MoCoV2(Method):
    Config = MoCoV2Config

    def __init__(self, backbone: nn.Module, cfg: MoCoV2Config | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or MoCoV2Config()
        d = backbone.embed_dim
        self.backbone = backbone
        self.head = projection_head(d, cfg.head_hidden_dim or d, cfg.head_out_dim,
                                    batch_norm=False)
        self.key_backbone, self.key_head = frozen_copy(backbone), frozen_copy(self.head)
        self.queue = MemoryQueue(cfg.queue_size, cfg.head_out_dim)
        self.augment = ViewAugment(view_cfg or ViewConfig())
        self._last_keys: torch.Tensor | None = None

    def views(self, images):
        return [self.augment(images), self.augment(images)]

    def _query(self, x):
        return self.head(_forward_in_groups(self.backbone, x, self.cfg.bn_splits))

    @torch.no_grad()
    def _key(self, x):
        perm = torch.randperm(x.shape[0], device=x.device)
        k = self.key_head(_forward_in_groups(self.key_backbone, x[perm], self.cfg.bn_splits))
        return nn.functional.normalize(k[torch.argsort(perm)], dim=1)   # un-shuffle

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        x1, x2 = views
        # MoCo v2 is asymmetric: x1 gives the queries, x2 the keys (Algorithm 1)
        q = self._query(x1)
        k = gather_with_grad(self._key(x2))
        loss = info_nce(gather_with_grad(q), k, self.queue.items.clone().detach(),
                        self.cfg.temperature)
        self._last_keys = k
        return StepOutput(loss, {"loss": loss.item()}, embeddings=q.detach())

    def after_optimizer_step(self, progress: float) -> None:
        ema_update(self.key_backbone, self.backbone, self.cfg.momentum)
        ema_update(self.key_head, self.head, self.cfg.momentum)
        if self._last_keys is not None:
            self.queue.push(self._last_keys)   # the queue changes only here, by a named call
            self._last_keys = None

    @property
    def encoder(self):
        return self.backbone
