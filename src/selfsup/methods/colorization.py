"""Colorful Image Colorization (Zhang, Isola & Efros, ECCV 2016) as a pretext task.

Defining idea: predicting the colours of a grayscale photo requires recognising what is in it;
posed as classification over quantised colours (not regression, which gives grey-brown averages).

Algorithm (paper Sec. 2): Lab colour space; the network sees only L and predicts, at 1/4 of the
resolution, a distribution over Q in-gamut ab bins (grid 10); the target is a soft encoding (the 5
nearest bins, Gaussian sigma 5); the cross-entropy of each pixel is weighted by class
rebalancing, w proportional to ((1 - lambda) p~ + lambda / Q)^-1 with lambda 0.5, E_p~[w] = 1,
where p~ is the ab prior (here a running estimate over the training images, updated after each
step). Colours are decoded with the annealed mean at T = 0.38. The bins are the ab cells reached
by the sRGB gamut (computed from a 64^3 RGB grid: fewer than the paper's 313 from its own gamut
file). The encoder used downstream takes RGB and converts it to L itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import kornia.color
import torch
import torch.nn.functional as F
from torch import nn

from ..augment.views import ViewConfig, shifted_view
from ..heads.decoder import ConvDecoder
from ..report.pictures import denormalize
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@lru_cache(maxsize=4)
def ab_bins(grid: int = 10, steps: int = 64) -> torch.Tensor:
    """[Q, 2] centres (multiples of ``grid``) of the ab cells that some sRGB colour falls in."""
    g = torch.linspace(0, 1, steps)
    rgb = torch.stack(torch.meshgrid(g, g, g, indexing="ij")).reshape(1, 3, -1, 1)
    ab = kornia.color.rgb_to_lab(rgb)[0, 1:, :, 0].T                       # [steps^3, 2]
    return torch.unique(torch.round(ab / grid), dim=0).float() * grid


def soft_encode(ab: torch.Tensor, centers: torch.Tensor, k: int = 5, sigma: float = 5.0
                ) -> torch.Tensor:
    """ab [N, 2] -> [N, Q]: Gaussian weights (sigma) on the k nearest bin centres, normalised."""
    d2 = torch.cdist(ab, centers) ** 2                                     # [N, Q]
    near_d2, near = d2.topk(k, dim=1, largest=False)
    w = torch.exp(-near_d2 / (2 * sigma ** 2))
    out = torch.zeros_like(d2)
    return out.scatter_(1, near, w / w.sum(dim=1, keepdim=True))


def rebalance_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """w_q proportional to 1 / ((1 - lam) p_q + lam / Q), scaled so that sum_q p_q w_q = 1."""
    w = 1.0 / ((1 - lam) * prior + lam / prior.numel())
    return w / (prior * w).sum()


def annealed_mean(logits: torch.Tensor, centers: torch.Tensor, temperature: float = 0.38
                  ) -> torch.Tensor:
    """[B, Q, h, w] logits -> [B, 2, h, w] ab: the mean of softmax(log p / T) (Zhang et al.,
    Eq. 5); T -> 0 gives the mode, T = 1 the mean."""
    p = F.softmax(F.log_softmax(logits, dim=1) / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", p, centers.to(logits))


def rgb01_to_lab(x01: torch.Tensor) -> torch.Tensor:
    return kornia.color.rgb_to_lab(x01.clamp(0, 1))


class LightnessInput(nn.Module):
    """The downstream encoder: normalised RGB -> L channel (scaled to about [-1, 1], repeated to
    3 channels) -> backbone."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.embed_dim = backbone.embed_dim

    @staticmethod
    def lightness(x: torch.Tensor) -> torch.Tensor:
        lum = rgb01_to_lab(denormalize(x))[:, :1]
        return ((lum - 50) / 50).expand(-1, 3, -1, -1).contiguous()

    def rewrap(self, module: nn.Module) -> "LightnessInput":
        """The same L-channel input in front of another module (e.g. a stage probe)."""
        return LightnessInput(module)

    def forward_map(self, x):
        return self.backbone.forward_map(self.lightness(x))

    def forward(self, x):
        return self.backbone(self.lightness(x))


@dataclass
class ColorizationConfig:
    grid: int = 10
    sigma: float = 5.0
    k_nearest: int = 5
    rebalance_lambda: float = 0.5
    temperature: float = 0.38
    out_stride: int = 4            # predictions at 1/4 of the input resolution
    prior_momentum: float = 0.99   # running estimate of the ab prior


@METHODS.register("colorization")
class Colorization(Method):
    Config = ColorizationConfig
    encoder_is_backbone = False   # downstream use needs the RGB -> L conversion in front

    def __init__(self, backbone: nn.Module, cfg: ColorizationConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ColorizationConfig()
        self.net = LightnessInput(backbone)
        self.register_buffer("centers", ab_bins(cfg.grid).clone())
        q = self.centers.shape[0]
        self.register_buffer("prior", torch.full((q,), 1.0 / q))
        scale = backbone.map_stride // cfg.out_stride
        if scale < 1:
            raise ValueError(f"colorization predicts at 1/{cfg.out_stride} resolution; this "
                             f"backbone's map is already 1/{backbone.map_stride}")
        self.decoder = ConvDecoder(backbone.embed_dim, q, scale)
        view_cfg = view_cfg or ViewConfig()
        self.size, self.flip_p = view_cfg.size, view_cfg.flip_p
        self._batch_hist: torch.Tensor | None = None

    @torch.no_grad()
    def views(self, images):
        return [shifted_view(images, self.size, 0.125, self.flip_p)]

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """Soft-encoded ab targets [B, Q, H/s, W/s] of normalised RGB images."""
        c = self.cfg
        ab = F.avg_pool2d(rgb01_to_lab(denormalize(x))[:, 1:], c.out_stride)   # [B, 2, h, w]
        b, _, h, w = ab.shape
        t = soft_encode(ab.permute(0, 2, 3, 1).reshape(-1, 2), self.centers, c.k_nearest,
                        c.sigma)
        return t.view(b, h, w, -1).permute(0, 3, 1, 2)

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        x = views[0]
        with torch.no_grad():
            target = self.targets(x)                                         # [B, Q, h, w]
            hist = target.sum(dim=(0, 2, 3))
            self._batch_hist = hist / hist.sum()
            w = rebalance_weights(self.prior, self.cfg.rebalance_lambda)
            pix_w = w[target.argmax(dim=1)]                                  # [B, h, w]
        logits = self.decoder(self.net.forward_map(x))
        ce = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)             # [B, h, w]
        loss = (ce * pix_w).mean()
        return StepOutput(loss, {"loss": loss.item(), "ce_unweighted": ce.mean().item()})

    def after_optimizer_step(self, progress: float) -> None:
        if self._batch_hist is not None:   # fold this batch's ab histogram into the prior
            m = self.cfg.prior_momentum
            self.prior.mul_(m).add_(self._batch_hist.to(self.prior), alpha=1 - m)
            self._batch_hist = None

    @torch.no_grad()
    def colorize(self, x: torch.Tensor) -> torch.Tensor:
        """normalised RGB -> RGB in [0, 1] rebuilt from its own L and the predicted ab."""
        lab = rgb01_to_lab(denormalize(x))
        ab = annealed_mean(self.decoder(self.net.forward_map(x)), self.centers,
                           self.cfg.temperature)
        ab = F.interpolate(ab, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return kornia.color.lab_to_rgb(torch.cat([lab[:, :1], ab], dim=1)).clamp(0, 1)

    @torch.no_grad()
    def pictures(self, x):
        gray = (self.net.lightness(x) * 0.5 + 0.5).clamp(0, 1)
        return {"grayscale input": gray, "colorized": self.colorize(x),
                "original": denormalize(x).clamp(0, 1)}

    @property
    def encoder(self) -> nn.Module:
        return self.net
