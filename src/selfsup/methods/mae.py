"""MAE: Masked Autoencoders Are Scalable Vision Learners (He et al., 2021).

Defining idea: hide most (75%) of an image's patches, encode only the visible ones with a ViT,
and have a light decoder reconstruct the pixels of the hidden ones.

Algorithm (facebookresearch/mae ``models_mae.py``): patch tokens + fixed sin-cos positions ->
per-sample random masking (keep 25%) -> encoder on the visible tokens (+ class token) -> linear to
the decoder width -> mask tokens appended, unshuffled to the patches' order, + decoder positions
-> decoder blocks -> linear to p*p*3 pixels; loss = MSE against each masked patch's pixels
normalised by that patch's mean/var (``norm_pix_loss``), averaged over masked patches only.
Augmentation: random resized crop (0.2-1) + flip, no colour jitter. AdamW (0.9, 0.95), wd 0.05,
base lr 1.5e-4 x batch/256. MAE features are weak under a linear probe: evaluate by fine-tuning
(``selfsup semisup method.name=supervised --init RUN``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..augment import ViewAugment, ViewConfig
from ..backbones.vit import Block, ViT, sincos_2d
from ..losses.reconstruction import masked_patch_mse, patchify, random_masking, unpatchify
from ..report.pictures import denormalize
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class MAEConfig:
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True


@METHODS.register("mae")
class MAE(Method):
    Config = MAEConfig

    def __init__(self, backbone: nn.Module, cfg: MAEConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        if not isinstance(backbone, ViT):
            raise ValueError("mae needs a ViT backbone: set model.backbone=vit_tiny (or vit_small)")
        if backbone.pool != "cls":
            raise ValueError("mae's encoder and decoder carry the class token: set model.pool=cls")
        self.cfg = cfg = cfg or MAEConfig()
        self.backbone = backbone
        p, n = backbone.patch_size, backbone.num_patches
        self.decoder_embed = nn.Linear(backbone.embed_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("decoder_pos", sincos_2d(cfg.decoder_dim, backbone.grid)[None],
                             persistent=False)
        self.decoder = nn.ModuleList(Block(cfg.decoder_dim, cfg.decoder_heads)
                                     for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, p * p * 3)
        self.num_patches = n
        # the paper's augmentation: crop + flip only
        vc = replace(view_cfg or ViewConfig(), color=False, scale_min=0.2)
        self.augment = ViewAugment(vc)

    def views(self, images):
        return [self.augment(images)]

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """(predicted patches [B, n, p*p*3], mask [B, n]) for normalised images x."""
        b = x.shape[0]
        keep, mask, restore = random_masking(b, self.num_patches, self.cfg.mask_ratio, x.device,
                                             generator)
        latent = self.backbone.forward_tokens(x, keep)               # [B, 1 + n_keep, D]
        t = self.decoder_embed(latent)
        n_masked = self.num_patches - keep.shape[1]
        t_patches = torch.cat([t[:, 1:], self.mask_token.expand(b, n_masked, -1)], dim=1)
        t_patches = torch.gather(t_patches, 1, restore[..., None].expand(-1, -1, t.shape[-1]))
        t = torch.cat([t[:, :1], t_patches + self.decoder_pos], dim=1)
        for blk in self.decoder:
            t = blk(t)
        pred = self.decoder_pred(self.decoder_norm(t))[:, 1:]         # drop the class token
        return pred, mask

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        x = views[0]
        pred, mask = self.reconstruct(x)
        target = patchify(x, self.backbone.patch_size)
        loss = masked_patch_mse(pred, target, mask, self.cfg.norm_pix_loss)
        return StepOutput(loss, {"loss": loss.item(), "mask_ratio": mask.mean().item()})

    @torch.no_grad()
    def pictures(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inputs, masked inputs and reconstructions in [0, 1] for a person to look at (with
        norm_pix_loss the predicted patches are shown with the visible patches' statistics)."""
        p = self.backbone.patch_size
        pred, mask = self.reconstruct(x)
        target = patchify(x, p)
        if self.cfg.norm_pix_loss:  # undo the per-patch normalisation with the true statistics
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        m = mask[..., None]
        masked = unpatchify(target * (1 - m), p)
        recon = unpatchify(target * (1 - m) + pred * m, p)
        return {"input": denormalize(x).clamp(0, 1), "masked": denormalize(masked).clamp(0, 1),
                "reconstruction": denormalize(recon).clamp(0, 1)}

    @property
    def encoder(self) -> nn.Module:
        return self.backbone
