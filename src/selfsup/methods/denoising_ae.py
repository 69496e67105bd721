"""Denoising autoencoder (Vincent, Larochelle, Bengio & Manzagol, 2008; Vincent et al., 2010).

Defining idea: corrupt the input and train the network to reconstruct the *clean* input, so it
must learn the structure of the data rather than copy pixels.

Algorithm: x -> corruption q(x~|x) (masking noise: a fraction of pixels set to 0; additive
Gaussian; salt-and-pepper) -> encoder (the backbone's feature map) -> convolutional decoder ->
sigmoid -> reconstruction; loss = squared error to the clean x over all pixels, or only over the
corrupted ones (``loss_on: corrupted``, the paper's "emphasised" extreme).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..augment.noise import NOISES
from ..augment.views import IMAGENET_MEAN, IMAGENET_STD, ViewConfig, normalize, shifted_view
from ..heads.decoder import ConvDecoder
from ..report.pictures import denormalize
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class DenoisingAEConfig:
    noise: str = "masking"        # masking | gaussian | salt_pepper
    level: float = 0.25           # masking/salt_pepper: fraction of pixels; gaussian: std
    loss_on: str = "all"          # all | corrupted
    decoder_hidden: int = 0       # 0 = the backbone's width


@METHODS.register("denoising_ae")
class DenoisingAE(Method):
    Config = DenoisingAEConfig

    def __init__(self, backbone: nn.Module, cfg: DenoisingAEConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DenoisingAEConfig()
        if cfg.noise not in NOISES:
            raise ValueError(f"method.noise must be one of {', '.join(NOISES)}; got {cfg.noise!r}")
        if cfg.loss_on not in ("all", "corrupted"):
            raise ValueError(f"method.loss_on must be 'all' or 'corrupted'; got {cfg.loss_on!r}")
        self.backbone = backbone
        self.decoder = ConvDecoder(backbone.embed_dim, 3, backbone.map_stride, cfg.decoder_hidden)
        view_cfg = view_cfg or ViewConfig()
        self.size, self.flip_p = view_cfg.size, view_cfg.flip_p

    @torch.no_grad()
    def views(self, images):
        return [shifted_view(images, self.size, 0.0, self.flip_p)]

    def corrupt(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return NOISES[self.cfg.noise](x01, self.cfg.level)

    def reconstruct(self, x: torch.Tensor):
        """normalised clean x -> (corrupted [0,1], reconstruction [0,1], corrupted-pixel mask)."""
        clean = denormalize(x).clamp(0, 1)
        noisy, mask = self.corrupt(clean)
        recon = torch.sigmoid(self.decoder(self.backbone.forward_map(
            normalize(noisy, IMAGENET_MEAN, IMAGENET_STD))))
        return noisy, recon, mask

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        x = views[0]
        clean = denormalize(x).clamp(0, 1)
        noisy, recon, mask = self.reconstruct(x)
        err = ((recon - clean) ** 2).mean(dim=1, keepdim=True)          # [B, 1, H, W]
        if self.cfg.loss_on == "corrupted":
            loss = (err * mask).sum() / mask.sum().clamp_min(1)
        else:
            loss = err.mean()
        return StepOutput(loss, {"loss": loss.item(), "corrupted": mask.mean().item()})

    @torch.no_grad()
    def pictures(self, x):
        noisy, recon, _ = self.reconstruct(x)
        return {"input": denormalize(x).clamp(0, 1), "corrupted": noisy, "reconstruction": recon}

    @property
    def encoder(self) -> nn.Module:
        return self.backbone
