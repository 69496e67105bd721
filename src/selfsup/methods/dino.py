"""DINO: Emerging Properties in Self-Supervised Vision Transformers (Caron et al., 2021).

Defining idea: self-distillation without labels: a student matches the output distribution of a
momentum teacher across views; centering and sharpening the teacher's outputs prevent collapse.

Algorithm (paper, Algorithm 1), with multi-crop (2 global + k local):
    s_v = g_s(f_s(x_v)) for every crop;  t_g = g_t(f_t(x_g)) for the 2 global crops (no gradient)
    loss = mean over (g, v != g) of CE(softmax((t_g - C) / tau_t), log_softmax(s_v / tau_s))
    after the update: teacher <- m teacher + (1 - m) student (m: cosine 0.996 -> 1);
                      C <- 0.9 C + 0.1 mean(t)
tau_s = 0.1; tau_t warms up linearly from 0.04 to 0.07 over the first 30% of training (paper
Sec. 3 / App.); the last layer is frozen during the first epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ViewConfig
from ..augment.multicrop import MultiCrop, local_size_for
from ..losses import dino_center, dino_loss
from ..losses.clustering import target_diagnostics
from ..nn.distributed import all_reduce_mean
from ..nn.ema import cosine_momentum, ema_update, frozen_copy
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class DINOConfig:
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_fraction: float = 0.3   # 30 of 100 epochs
    center_momentum: float = 0.9
    base_momentum: float = 0.996
    freeze_last_layer: float = 0.01             # fraction of training (first epoch of 100)
    n_local_crops: int = 8
    local_size: int = 0                         # 0 = 96/224 of the global size (ViT: whole patches)
    global_scale_min: float = 0.4
    local_scale_min: float = 0.05
    local_scale_max: float = 0.4
    head_bn: bool = False                       # BatchNorm after the head's hidden layers: the
                                                # official repo's --use_bn_in_head (default off)


class DINOHead(nn.Module):
    """3-layer MLP (GELU) -> bottleneck -> l2-normalise -> weight-normalised linear (norm fixed
    to 1, as the paper's norm_last_layer=True)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int,
                 bn: bool = False):
        super().__init__()

        def hidden(i: int) -> list[nn.Module]:
            return [nn.Linear(i, hidden_dim), *([nn.BatchNorm1d(hidden_dim)] if bn else []),
                    nn.GELU()]

        self.mlp = nn.Sequential(*hidden(in_dim), *hidden(hidden_dim),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x, freeze_last_layer: bool = False):
        w = self.last_layer.weight                 # the weight-normalised [out, bottleneck]
        return F.linear(self.bottleneck(x), w.detach() if freeze_last_layer else w)

    def bottleneck(self, x):
        """The l2-normalised bottleneck embedding (what collapse metrics look at). Tokens
        [B, n, D] go through as B * n rows (BatchNorm in the head statistics over all of them)."""
        z = self.mlp(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)
        return F.normalize(z, dim=-1)


@METHODS.register("dino")
class DINO(Method):
    Config = DINOConfig

    def __init__(self, backbone: nn.Module, cfg: DINOConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DINOConfig()
        view_cfg = view_cfg or ViewConfig()
        self.backbone = backbone
        self.head = DINOHead(backbone.embed_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim,
                             cfg.head_bn)
        self.teacher_backbone, self.teacher_head = frozen_copy(backbone), frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(cfg.out_dim))
        # a ViT's local crops tile into whole patches (12 px at 32 px with 4 px patches)
        local = cfg.local_size or local_size_for(view_cfg.size, getattr(backbone, "patch_size", 2))
        self.crops = MultiCrop(view_cfg, cfg.n_local_crops, local, (cfg.global_scale_min, 1.0),
                               (cfg.local_scale_min, cfg.local_scale_max))
        self._teacher_out: list[torch.Tensor] | None = None

    def teacher_temp(self, progress: float) -> float:
        c = self.cfg
        if progress < c.warmup_teacher_temp_fraction:
            a = progress / c.warmup_teacher_temp_fraction
            return c.warmup_teacher_temp + a * (c.teacher_temp - c.warmup_teacher_temp)
        return c.teacher_temp

    def views(self, images):
        return self.crops(images)

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        cfg, n = self.cfg, views[0].shape[0]
        freeze = progress < cfg.freeze_last_layer  # no gradient into the last layer at first
        h = self.backbone(torch.cat(views[:2]))
        s = list(self.head(h, freeze).split(n))
        if len(views) > 2:
            s += list(self.head(self.backbone(torch.cat(views[2:])), freeze).split(n))
        with torch.no_grad():
            t = list(self.teacher_head(self.teacher_backbone(torch.cat(views[:2]))).split(n))
        tt = self.teacher_temp(progress)
        loss = dino_loss(s, t, self.center, cfg.student_temp, tt)
        self._teacher_out = t
        with torch.no_grad():
            emb = self.head.bottleneck(h[:n])
        logs = {"loss": loss.item(), "teacher_temp": tt, "center_norm": float(self.center.norm()),
                **target_diagnostics(t[0], self.center, tt)}
        return StepOutput(loss, logs, embeddings=emb)

    def after_optimizer_step(self, progress: float) -> None:
        m = cosine_momentum(progress, self.cfg.base_momentum)
        ema_update(self.teacher_backbone, self.backbone, m)
        ema_update(self.teacher_head, self.head, m)
        if self._teacher_out is not None:   # the centre changes only here
            batch_mean = all_reduce_mean(torch.cat(self._teacher_out).mean(0))
            self.center.copy_(dino_center(self.center, [batch_mean[None]], self.cfg.center_momentum))
            self._teacher_out = None

    @property
    def encoder(self):
        return self.backbone
