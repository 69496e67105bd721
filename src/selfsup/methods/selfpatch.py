"""SelfPatch: Patch-level Representation Learning for Self-supervised Vision Transformers
(Yun, Lee, Kim & Shin, CVPR 2022).

Defining idea: neighbouring patches of an image mostly show the same object, so each patch can be
its own positive: the teacher's aggregate of a patch's most similar neighbours is the target of
the student's representation of that patch. Added to DINO it makes patch tokens (the features
dense tasks use) semantic, not only the image token.

Algorithm (paper, Sec. 3; alinlab/SelfPatch ``main_selfpatch.py``, ``SelfPatchHead``), on DINO:
    P_s, P_t = student / teacher ViT patch tokens of every crop          # [B, n, D]
    student:  c_s = CA(P_s) (class attention over the patches);  z_s,i = norm(P_s,i)
    teacher:  c_t = CA(P_t);  for each patch i, N(i) = its 8 neighbours in the 3x3 window
              (indices wrap around the borders), keep the top-k (k = 4) by cosine similarity of
              the teacher's tokens, y_i = CA_i(those k tokens)   (a per-patch class-attention query)
    L = L_DINO(head(c_s), head_t(c_t))                               # global targets, as DINO
      + 0.1 * mean_{views, i} CE(softmax((head'_t(y_i) - C') / tau_t), log_softmax(head'(z_s,i) / 0.1))
      (same view for student and teacher; every crop, local ones included; own head and centre C';
      tau_t is the image term's warming-up teacher temperature, as the official DINOLoss uses one
      schedule for both terms)
    after the update: C <- 0.9 C + 0.1 mean of head_t(c_t) over every crop (the official
      ``update_center`` takes the teacher outputs of all crops), C' likewise over every patch
The class-attention blocks have no LayerScale (the official ``LayerScale_Block_CA`` applies
none despite its name); ``layer_scale > 0`` adds CaiT's. ``head_bn`` puts BatchNorm in both heads'
hidden layers: the small-scale setting that keeps DINO from collapsing (BENCHMARKS.md 3).
The image representation is the class-attention token (``encoder``), the patch tokens are the
ViT's (``encoder.forward_map``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ViewConfig
from ..augment.multicrop import MultiCrop
from ..losses import dino_center, dino_loss
from ..losses.clustering import selfpatch_loss, target_diagnostics
from ..nn.distributed import all_reduce_mean
from ..nn.ema import cosine_momentum, ema_update, frozen_copy
from . import METHODS
from .base import BatchInfo, Method, StepOutput
from .dino import DINOHead


def neighbour_index(grid: int, window: int = 3) -> torch.Tensor:
    """[grid*grid, window^2 - 1]: for each patch (row-major), the indices of the other patches of
    its window x window neighbourhood, wrapping around the borders (the official
    ``get_local_index`` uses modulo)."""
    r = window // 2
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    ys, xs = ys.reshape(-1, 1), xs.reshape(-1, 1)
    dy = torch.tensor([o[0] for o in offsets]).view(1, -1)
    dx = torch.tensor([o[1] for o in offsets]).view(1, -1)
    return ((ys + dy) % grid) * grid + (xs + dx) % grid


def top_k_neighbours(tokens: torch.Tensor, k: int, window: int = 3) -> torch.Tensor:
    """tokens [B, n, D] on a square grid -> [B, n, k, D]: for each patch, its k neighbours most
    cosine-similar to it (the teacher's side of SelfPatch)."""
    b, n, d = tokens.shape
    grid = int(round(n ** 0.5))
    if grid * grid != n:
        raise ValueError(f"SelfPatch needs a square grid of patches, got {n}")
    idx = neighbour_index(grid, window).to(tokens.device)           # [n, w]
    nb = tokens[:, idx]                                             # [B, n, w, D]
    unit = F.normalize(tokens, dim=-1)
    sim = (F.normalize(nb, dim=-1) * unit[:, :, None]).sum(-1)      # [B, n, w]
    top = sim.topk(min(k, idx.shape[1]), dim=-1).indices            # [B, n, k]
    return torch.gather(nb, 2, top[..., None].expand(-1, -1, -1, d))


class ClassAttentionBlock(nn.Module):
    """CaiT's class-attention block (Touvron et al., 2021): the query token attends to itself
    and the given tokens; only the query is updated. ``layer_scale`` > 0: CaiT's LayerScale on
    both residuals (SelfPatch's official blocks have none: 0)."""

    def __init__(self, dim: int, heads: int, layer_scale: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma1 = self.gamma2 = None
        if layer_scale > 0:
            self.gamma1 = nn.Parameter(torch.full((dim,), layer_scale))
            self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, tokens: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        u = self.norm1(torch.cat([query, tokens], 1))
        a = self.attn(u[:, :1], u, u, need_weights=False)[0]
        query = query + (a if self.gamma1 is None else self.gamma1 * a)
        m = self.mlp(self.norm2(query))
        return query + (m if self.gamma2 is None else self.gamma2 * m)


class SelfPatchHead(nn.Module):
    """Class-attention blocks between the ViT and the DINO heads (``SelfPatchHead``)."""

    def __init__(self, dim: int, heads: int, depth: int = 2, k: int = 4, layer_scale: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(ClassAttentionBlock(dim, heads, layer_scale)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.query, std=0.02)
        self.k = k

    def image_token(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, n, D] -> [B, D]: class attention over all patches, normalised."""
        q = self.query.expand(patches.shape[0], -1, -1)
        for blk in self.blocks:
            q = blk(patches, q)
        return self.norm(q[:, 0])

    def forward(self, patches: torch.Tensor, aggregate: bool = False):
        """Student (``aggregate=False``): (image token, norm(patch tokens)). Teacher: (image
        token, per-patch class attention over the top-k neighbours) [B, n, D]."""
        cls = self.image_token(patches)
        if not aggregate:
            return cls, self.norm(patches)
        b, n, d = patches.shape
        nb = top_k_neighbours(patches, self.k).reshape(b * n, -1, d)
        q = self.query.expand(b * n, -1, -1)
        for blk in self.blocks:
            q = blk(nb, q)
        return cls, self.norm(q[:, 0]).view(b, n, d)


class SelfPatchEncoder(nn.Module):
    """What evaluation and export use: image features = the class-attention token, patch
    features (``forward_map``) = the ViT's patch tokens."""

    def __init__(self, vit: nn.Module, head: SelfPatchHead):
        super().__init__()
        self.vit, self.ca = vit, head
        self.embed_dim, self.map_stride = vit.embed_dim, vit.map_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ca.image_token(self.vit.patch_tokens(x))

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_map(x)


@dataclass
class SelfPatchConfig:
    # DINO part (paper: ViT-S/16 DINO recipe)
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_fraction: float = 0.3
    center_momentum: float = 0.9
    base_momentum: float = 0.996
    freeze_last_layer: float = 0.01
    n_local_crops: int = 8
    local_size: int = 0            # 0 = 96/224 of the global size, rounded to the patch size
    global_scale_min: float = 0.25  # SelfPatch's crops: globals (0.25, 1), locals (0.05, 0.25)
    local_scale_min: float = 0.05
    local_scale_max: float = 0.25
    # SelfPatch part
    patch_out_dim: int = 4096      # the patch head's own output dimension
    patch_weight: float = 0.1      # lambda of the patch loss
    patch_teacher_temp: float = 0.0  # 0 = the image term's schedule (official); > 0: fixed
    k: int = 4                     # neighbours kept of the 8
    ca_depth: int = 2              # class-attention blocks
    layer_scale: float = 0.0       # 0 = none (official); > 0: CaiT's LayerScale init
    head_bn: bool = False          # BatchNorm in both heads (DINO's small-scale setting)


@METHODS.register("selfpatch")
class SelfPatch(Method):
    Config = SelfPatchConfig
    encoder_is_backbone = False   # the encoder file holds the ViT and the class-attention head

    def __init__(self, backbone: nn.Module, cfg: SelfPatchConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        if not hasattr(backbone, "patch_tokens"):
            raise ValueError("SelfPatch needs a ViT backbone (model.backbone=vit_tiny or "
                             "vit_small)")
        self.cfg = cfg = cfg or SelfPatchConfig()
        view_cfg = view_cfg or ViewConfig()
        d, heads = backbone.embed_dim, backbone.blocks[0].attn.num_heads
        self.backbone = backbone
        self.ca = SelfPatchHead(d, heads, cfg.ca_depth, cfg.k, cfg.layer_scale)
        self.head = DINOHead(d, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.head_bn)
        self.patch_head = DINOHead(d, cfg.patch_out_dim, cfg.hidden_dim, cfg.bottleneck_dim,
                                   cfg.head_bn)
        self.teacher_backbone, self.teacher_ca = frozen_copy(backbone), frozen_copy(self.ca)
        self.teacher_head, self.teacher_patch_head = (frozen_copy(self.head),
                                                      frozen_copy(self.patch_head))
        self.register_buffer("center", torch.zeros(cfg.out_dim))
        self.register_buffer("patch_center", torch.zeros(cfg.patch_out_dim))
        p = backbone.patch_size
        local = cfg.local_size or max(p, int(round(view_cfg.size * 96 / 224 / p)) * p)
        self.crops = MultiCrop(view_cfg, cfg.n_local_crops, local, (cfg.global_scale_min, 1.0),
                               (cfg.local_scale_min, cfg.local_scale_max))
        self._encoder = SelfPatchEncoder(backbone, self.ca)
        self._teacher_out: tuple[list, list] | None = None

    def teacher_temp(self, progress: float) -> float:
        c = self.cfg
        if progress < c.warmup_teacher_temp_fraction:
            a = progress / c.warmup_teacher_temp_fraction
            return c.warmup_teacher_temp + a * (c.teacher_temp - c.warmup_teacher_temp)
        return c.teacher_temp

    def views(self, images):
        return self.crops(images)

    def _groups(self, views):
        """Crops of one size go through the networks together: globals, then the locals."""
        groups = [torch.cat(views[:2])]
        if len(views) > 2:
            groups.append(torch.cat(views[2:]))
        return groups

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        cfg, n = self.cfg, views[0].shape[0]
        freeze = progress < cfg.freeze_last_layer
        s_cls, s_patch, t_cls, t_patch = [], [], [], []
        for g in self._groups(views):
            cls, pt = self.ca(self.backbone.patch_tokens(g))
            if not s_cls:
                first_cls = cls.detach()
            s_cls += list(self.head(cls, freeze).split(n))
            s_patch += list(self.patch_head(pt, freeze).split(n))
            with torch.no_grad():
                tc, tp = self.teacher_ca(self.teacher_backbone.patch_tokens(g),
                                         aggregate=True)
                t_patch += list(self.teacher_patch_head(tp).split(n))
                t_cls += list(self.teacher_head(tc).split(n))   # every crop: for the centre
        tt = self.teacher_temp(progress)
        ptt = cfg.patch_teacher_temp or tt
        # image targets from the 2 global crops only, as DINO
        loss_img = dino_loss(s_cls, t_cls[:2], self.center, cfg.student_temp, tt)
        loss_patch = torch.stack([
            selfpatch_loss(s, t, self.patch_center, cfg.student_temp, ptt)
            for s, t in zip(s_patch, t_patch)]).mean()
        loss = loss_img + cfg.patch_weight * loss_patch
        self._teacher_out = (t_cls, t_patch)
        with torch.no_grad():
            emb = self.head.bottleneck(first_cls[:n])
        return StepOutput(loss, {"loss": loss.item(), "loss_image": loss_img.item(),
                                 "loss_patch": loss_patch.item(), "teacher_temp": tt,
                                 "patch_teacher_temp": ptt,
                                 **target_diagnostics(t_cls[0], self.center, tt)},
                          embeddings=emb)

    def after_optimizer_step(self, progress: float) -> None:
        m = cosine_momentum(progress, self.cfg.base_momentum)
        for t, s in ((self.teacher_backbone, self.backbone), (self.teacher_ca, self.ca),
                     (self.teacher_head, self.head), (self.teacher_patch_head, self.patch_head)):
            ema_update(t, s, m)
        if self._teacher_out is not None:
            t_cls, t_patch = self._teacher_out
            mom = self.cfg.center_momentum
            cls_mean = all_reduce_mean(torch.cat(t_cls).mean(0))
            patch_mean = all_reduce_mean(torch.cat([t.flatten(0, 1) for t in t_patch]).mean(0))
            self.center.copy_(dino_center(self.center, [cls_mean[None]], mom))
            self.patch_center.copy_(dino_center(self.patch_center, [patch_mean[None]], mom))
            self._teacher_out = None

    @property
    def encoder(self):
        return self._encoder

