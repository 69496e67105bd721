"""SwAV: Unsupervised Learning of Visual Features by Contrasting Cluster Assignments
(Caron et al., 2020).

Defining idea: predict the cluster assignment (code) of one view from another view, with codes
computed online by Sinkhorn-Knopp under an equal-partition constraint that prevents collapse.

Algorithm (paper, Sec. 3.1 and Algorithm 1), per minibatch with multi-crop (2 global + k local):
    z_v = normalize(h(f(x_v)))                  # every crop
    s_v = z_v @ C^T                             # prototype scores, C: [K, D] l2-normalised
    q_g = sinkhorn(s_g, eps=0.05, 3 iters)      # codes of the 2 global crops only, no gradient
    loss = mean over (g, v != g) of CE(q_g, softmax(s_v / 0.1))
Prototypes stay frozen for the first part of training and are re-normalised after each update.
An optional queue of past global-crop embeddings enlarges the Sinkhorn batch (small batches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ViewConfig
from ..augment.multicrop import MultiCrop, local_size_for
from ..heads.mlp import projection_head
from ..losses import sinkhorn, swav_loss
from ..nn.queue import MemoryQueue
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class SwAVConfig:
    hidden_dim: int = 2048
    out_dim: int = 128
    n_prototypes: int = 3000
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    freeze_prototypes: float = 0.0025   # fraction of training (the first epoch of 400)
    n_local_crops: int = 6
    local_size: int = 0                 # 0 = 96/224 of the global size
    global_scale_min: float = 0.14
    local_scale_min: float = 0.05
    local_scale_max: float = 0.14
    queue_size: int = 0                 # 0 = no queue (paper: 3840 for small batches)
    queue_start: float = 0.0375         # fraction of training after which the queue is used


@METHODS.register("swav")
class SwAV(Method):
    Config = SwAVConfig
    sync_bn = True   # the paper syncs BatchNorm across devices

    def __init__(self, backbone: nn.Module, cfg: SwAVConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SwAVConfig()
        view_cfg = view_cfg or ViewConfig()
        self.backbone = backbone
        self.projector = projection_head(backbone.embed_dim, cfg.hidden_dim, cfg.out_dim)
        self.prototypes = nn.Linear(cfg.out_dim, cfg.n_prototypes, bias=False)
        self._normalize_prototypes()
        self.crops = MultiCrop(view_cfg, cfg.n_local_crops, cfg.local_size or
                               local_size_for(view_cfg.size), (cfg.global_scale_min, 1.0),
                               (cfg.local_scale_min, cfg.local_scale_max))
        self.queue = MemoryQueue(cfg.queue_size, cfg.out_dim) if cfg.queue_size else None
        # how many embeddings the queue has received: a buffer, so a resumed run knows whether
        # the queue was already full (it starts being used at the same step as without the kill)
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._to_enqueue: torch.Tensor | None = None

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def views(self, images):
        return self.crops(images)

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        cfg, n = self.cfg, views[0].shape[0]
        z_global = F.normalize(self.projector(self.backbone(torch.cat(views[:2]))), dim=1)
        zs = list(z_global.split(n))
        if len(views) > 2:  # local crops share one resolution: one forward
            z_local = F.normalize(self.projector(self.backbone(torch.cat(views[2:]))), dim=1)
            zs += list(z_local.split(n))
        # frozen prototypes: no gradient reaches them during the first part of training
        w = self.prototypes.weight if progress >= cfg.freeze_prototypes else \
            self.prototypes.weight.detach()
        scores = [z @ w.t() for z in zs]                             # per crop [N, K]
        codes = []
        use_queue = self.queue is not None and progress >= cfg.queue_start and \
            int(self.queue_filled) >= self.queue.items.shape[0]
        for g in range(2):
            s = scores[g].detach()
            if use_queue:
                s = torch.cat([s, self.queue.items @ w.detach().t()])
            codes.append(sinkhorn(s, cfg.epsilon, cfg.sinkhorn_iterations)[:n])
        if self.queue is not None:
            self._to_enqueue = z_global.detach()
        loss = swav_loss(scores, codes, cfg.temperature)
        return StepOutput(loss, {"loss": loss.item()}, embeddings=zs[0].detach())

    def after_optimizer_step(self, progress: float) -> None:
        self._normalize_prototypes()
        if self.queue is not None and self._to_enqueue is not None:
            self.queue.push(self._to_enqueue[: self.queue.items.shape[0]])
            self.queue_filled += self._to_enqueue.shape[0]
            self._to_enqueue = None

    @property
    def encoder(self):
        return self.backbone
