"""VAE: Auto-Encoding Variational Bayes (Kingma & Welling, 2014), with the beta weight of
Higgins et al. (2017).

Defining idea: an encoder q(z|x) = N(mu(x), diag sigma^2(x)) and a decoder p(x|z) trained by
maximising the evidence lower bound, with z = mu + sigma * eps (the reparameterisation trick) so
gradients pass through the sampling.

Loss per image = -log p(x|z) (Bernoulli over pixels in [0, 1], summed) + beta KL(q(z|x) || N(0, I))
(closed form), averaged over the batch. The backbone's pooled features give mu and log sigma^2;
the decoder maps z to a feature map and up to the image. Evaluation uses the backbone features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment.views import ViewConfig, shifted_view
from ..heads.decoder import ConvDecoder
from ..losses.reconstruction import gaussian_kl
from ..report.pictures import denormalize
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class VAEConfig:
    latent_dim: int = 128
    beta: float = 1.0
    decoder_channels: int = 128


@METHODS.register("vae")
class VAE(Method):
    Config = VAEConfig

    def __init__(self, backbone: nn.Module, cfg: VAEConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or VAEConfig()
        self.backbone = backbone
        view_cfg = view_cfg or ViewConfig()
        self.size, self.flip_p = view_cfg.size, view_cfg.flip_p
        self.to_stats = nn.Linear(backbone.embed_dim, 2 * cfg.latent_dim)    # -> mu, logvar
        self.s = max(1, self.size // backbone.map_stride)                    # decoder's start size
        self.from_z = nn.Linear(cfg.latent_dim, cfg.decoder_channels * self.s * self.s)
        self.decoder = ConvDecoder(cfg.decoder_channels, 3, self.size // self.s)

    @torch.no_grad()
    def views(self, images):
        return [shifted_view(images, self.size, 0.0, self.flip_p)]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.backbone(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_z(z).view(z.shape[0], -1, self.s, self.s)
        return self.decoder(F.relu(h))

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        x = views[0]
        target = denormalize(x).clamp(0, 1)
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()             # reparameterisation
        logits = self.decode_logits(z)
        rec = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        rec = rec.flatten(1).sum(1)                                       # -log p(x|z), [B]
        kl = gaussian_kl(mu, logvar)                                      # [B]
        loss = (rec + self.cfg.beta * kl).mean()
        return StepOutput(loss, {"loss": loss.item(), "reconstruction": rec.mean().item(),
                                 "kl": kl.mean().item()}, embeddings=mu.detach())

    @torch.no_grad()
    def pictures(self, x):
        mu, _ = self.encode(x)
        samples = torch.sigmoid(self.decode_logits(torch.randn_like(mu)))
        return {"input": denormalize(x).clamp(0, 1),
                "reconstruction": torch.sigmoid(self.decode_logits(mu)),
                "sample": samples}

    @property
    def encoder(self) -> nn.Module:
        return self.backbone
