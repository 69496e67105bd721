"""I-JEPA: Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture
(Assran et al., CVPR 2023).

Defining idea: predict, in representation space, what a slowly moving target encoder says about
several hidden blocks of an image from one large visible block; no hand-made view augmentation,
no pixel reconstruction, no negatives. The predictor is narrow (its width is a bottleneck on what
the latent prediction can carry), so the encoder must supply abstract, position-aware features.

Algorithm (paper Sec. 3; facebookresearch/ijepa ``src/train.py``), per minibatch of one random
crop (scale 0.3-1, no flip, no colour) of each image:
    blocks = multiblock_masks()                         # M = 4 targets, one context without them
    h = LayerNorm(f_target(x))[target patches]          # target encoder on the whole image, no grad
    z = f_context(x[context patches])                   # context encoder sees the context only
    p = g(z, positions of the context, positions of each target block)   # narrow ViT predictor
    loss = smooth_L1(p, h), mean over blocks, patches and features
    after the update: f_target <- m f_target + (1 - m) f_context, m linear from 0.996 to 1.
Neither encoder has a class token; features for evaluation are the mean of the final patch
tokens (the paper's average pooling): the backbone must be built with ``model.pool=mean``.
Paper recipe: AdamW, lr 1e-3 at batch 2048 with a 40-epoch warm-up of 300, weight decay cosine
0.04 -> 0.4; predictor depth 12 and width 384 for ViT-H (6 for ViT-B/L), its heads the
encoder's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..augment import ViewAugment, ViewConfig
from ..backbones.vit import Block, ViT, sincos_2d
from ..losses.predictive import BlockMasks, gather_tokens, ijepa_loss, multiblock_masks
from ..nn.ema import ema_update, frozen_copy
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class IJEPAConfig:
    pred_dim: int = 384               # predictor width (ViT-H/14's)
    pred_depth: int = 12
    pred_heads: int = 0               # 0 = the encoder's number of heads (the official choice)
    n_targets: int = 4
    target_scale_min: float = 0.15
    target_scale_max: float = 0.2
    target_aspect_min: float = 0.75
    target_aspect_max: float = 1.5
    context_scale_min: float = 0.85
    context_scale_max: float = 1.0
    min_keep: int = 10                # a context must keep more patches than this
    base_momentum: float = 0.996      # target EMA: linear from this to final_momentum
    final_momentum: float = 1.0
    crop_scale_min: float = 0.3       # the one random resized crop (scale 0.3-1), nothing else


class Predictor(nn.Module):
    """The narrow ViT predictor: context tokens -> pred_dim, + their position embeddings; one
    learned mask token + the position embedding of each target patch; transformer blocks over
    [context, targets of one block]; the target positions' outputs projected back to the
    encoder's width."""

    def __init__(self, embed_dim: int, dim: int, depth: int, heads: int, grid: int):
        super().__init__()
        if dim % heads or dim % 4:
            raise ValueError(f"method.pred_dim={dim} must be divisible by 4 and by the predictor's "
                             f"{heads} heads")
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", sincos_2d(dim, grid), persistent=False)   # [N, dim]
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, embed_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, context: torch.Tensor, ctx_idx: torch.Tensor,
                tgt_idx: torch.Tensor) -> torch.Tensor:
        """context [B, n, D] at patches ctx_idx [B, n]; targets tgt_idx [B, M, k] ->
        predictions [B, M, k, D]."""
        b, m, k = tgt_idx.shape
        n = context.shape[1]
        x = self.embed(context) + self.pos[ctx_idx]                        # [B, n, d]
        x = x[:, None].expand(-1, m, -1, -1).reshape(b * m, n, -1)         # one copy per block
        t = (self.mask_token + self.pos[tgt_idx]).reshape(b * m, k, -1)    # [B*M, k, d]
        x = torch.cat([x, t], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.proj(self.norm(x[:, n:])).view(b, m, k, -1)


@METHODS.register("ijepa")
class IJEPA(Method):
    Config = IJEPAConfig

    def __init__(self, backbone: nn.Module, cfg: IJEPAConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        if not isinstance(backbone, ViT):
            raise ValueError("ijepa needs a ViT backbone: set model.backbone=vit_tiny (or "
                             "vit_small) and model.pool=mean")
        if backbone.pool != "mean":
            raise ValueError("ijepa trains no class token; its features are the mean patch "
                             "token: set model.pool=mean")
        self.cfg = cfg = cfg or IJEPAConfig()
        self.backbone = backbone                       # the context encoder
        self.target_encoder = frozen_copy(backbone)
        heads = cfg.pred_heads or backbone.blocks[0].attn.num_heads
        self.predictor = Predictor(backbone.embed_dim, cfg.pred_dim, cfg.pred_depth, heads,
                                   backbone.grid)
        vc = replace(view_cfg or ViewConfig(), color=False, flip_p=0.0,
                     scale_min=cfg.crop_scale_min, scale_max=1.0)
        self.augment = ViewAugment(vc)

    def views(self, images):
        return [self.augment(images)]

    def momentum(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        return self.cfg.base_momentum + (self.cfg.final_momentum - self.cfg.base_momentum) * p

    def predict(self, x: torch.Tensor, masks: BlockMasks) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, target tokens), both [B, M, k, D], for images x and their blocks."""
        with torch.no_grad():
            h = gather_tokens(self.target_encoder.forward_tokens(x), masks.targets)
        z = self.backbone.forward_tokens(x, keep=masks.context)
        return self.predictor(z, masks.context, masks.targets), h

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        x = views[0]
        c = self.cfg
        masks = multiblock_masks(x.shape[0], self.backbone.grid, c.n_targets,
                                 (c.target_scale_min, c.target_scale_max),
                                 (c.target_aspect_min, c.target_aspect_max),
                                 (c.context_scale_min, c.context_scale_max), c.min_keep)
        pred, h = self.predict(x, masks)
        loss = ijepa_loss(pred, h)
        with torch.no_grad():   # collapse shows as target features that no longer vary
            target_std = torch.nn.functional.layer_norm(h, h.shape[-1:]).mean(2).std(0).mean()
        return StepOutput(loss, {
            "loss": loss.item(), "context_patches": float(masks.context.shape[1]),
            "target_patches": float(masks.targets.shape[2]),
            "momentum": self.momentum(progress), "target_std": target_std.item()},
            embeddings=h.mean((1, 2)))

    def after_optimizer_step(self, progress: float) -> None:
        ema_update(self.target_encoder, self.backbone, self.momentum(progress))

    @property
    def encoder(self) -> nn.Module:
        return self.backbone
