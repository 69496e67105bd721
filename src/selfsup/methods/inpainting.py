"""Context Encoders: Feature Learning by Inpainting (Pathak, Krahenbuhl, Donahue, Darrell &
Efros, CVPR 2016).

Defining idea: to fill in a missing region of an image convincingly, a network has to understand
the image's content; the encoder that does so is a feature extractor.

Algorithm (pathak22/context-encoder ``train.lua``): a region is removed (a central square of half
the side, or random blocks: better features, the paper's Sec. 5.2) and filled with the mean; the
encoder-decoder predicts the pixels; the L2 loss covers the region grown by ``overlap`` pixels
and weighs that border band x10, for seamless boundaries; an optional adversarial term (weight
0.001 vs 0.999 for L2) from a small DCGAN-style discriminator makes predictions sharp. The
discriminator learns in the same optimizer step: its loss reaches only its own parameters, and
the generator's adversarial loss runs through a detached copy of its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..augment.views import ViewConfig, shifted_view
from ..heads.decoder import ConvDecoder
from ..report.pictures import denormalize
from . import METHODS
from .base import BatchInfo, Method, StepOutput


def region_masks(b: int, size: int, kind: str = "center", fraction: float = 0.5,
                 n_blocks: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, 1, size, size] float masks, 1 = removed. ``center``: the central square of side
    fraction * size. ``random_blocks``: ``n_blocks`` squares of side fraction/2 * size at random
    places (the union is removed)."""
    m = torch.zeros(b, 1, size, size)
    if kind == "center":
        s = int(round(fraction * size))
        o = (size - s) // 2
        m[:, :, o:o + s, o:o + s] = 1
        return m
    if kind != "random_blocks":
        raise ValueError(f"method.mask must be 'center' or 'random_blocks', got {kind!r}")
    s = max(1, int(round(fraction * size / 2)))
    ys = torch.randint(0, size - s + 1, (b, n_blocks), generator=generator)
    xs = torch.randint(0, size - s + 1, (b, n_blocks), generator=generator)
    for i in range(b):
        for y, x in zip(ys[i].tolist(), xs[i].tolist()):
            m[i, :, y:y + s, x:x + s] = 1
    return m


def loss_weights(mask: torch.Tensor, overlap: int, overlap_weight: float) -> torch.Tensor:
    """Per-pixel weights of the reconstruction loss: 1 inside the removed region,
    ``overlap_weight`` on the ``overlap``-pixel band around it, 0 elsewhere."""
    if overlap <= 0:
        return mask.clone()
    grown = F.max_pool2d(mask, 2 * overlap + 1, stride=1, padding=overlap)
    return mask + overlap_weight * (grown - mask)


class Discriminator(nn.Module):
    """DCGAN-style: stride-2 4x4 convs with LeakyReLU(0.2) (BN after the first), then a linear
    to one logit."""

    def __init__(self, size: int, channels: int = 32):
        super().__init__()
        layers, c, s = [], 3, size
        for i in range(3):
            layers += [nn.Conv2d(c, channels * 2 ** i, 4, 2, 1, bias=i == 0)]
            if i > 0:
                layers.append(nn.BatchNorm2d(channels * 2 ** i))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c, s = channels * 2 ** i, s // 2
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * s * s, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


@dataclass
class InpaintingConfig:
    mask: str = "random_blocks"    # center | random_blocks
    fraction: float = 0.5          # centre: hole side / image side (64 of 128 px)
    n_blocks: int = 4
    overlap: int = 1               # px (4 of 128 in the paper; 1 at 32 px)
    overlap_weight: float = 10.0
    adv_weight: float = 0.001      # 0 = L2 only; the paper: 0.001 adversarial, 0.999 L2


@METHODS.register("inpainting")
class Inpainting(Method):
    Config = InpaintingConfig

    def __init__(self, backbone: nn.Module, cfg: InpaintingConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or InpaintingConfig()
        self.backbone = backbone
        self.decoder = ConvDecoder(backbone.embed_dim, 3, backbone.map_stride)
        view_cfg = view_cfg or ViewConfig()
        self.size, self.flip_p = view_cfg.size, view_cfg.flip_p
        self.discriminator = Discriminator(self.size) if cfg.adv_weight > 0 else None

    @torch.no_grad()
    def views(self, images):
        return [shifted_view(images, self.size, 0.0, self.flip_p)]

    def inpaint(self, x: torch.Tensor):
        """normalised x -> (mask, input with the region at the mean (0 after normalisation),
        prediction [normalised pixels])."""
        c = self.cfg
        mask = region_masks(x.shape[0], x.shape[-1], c.mask, c.fraction, c.n_blocks).to(x)
        inp = x * (1 - mask)
        return mask, inp, self.decoder(self.backbone.forward_map(inp))

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        c = self.cfg
        x = views[0]
        mask, _, pred = self.inpaint(x)
        w = loss_weights(mask, c.overlap, c.overlap_weight)
        rec = (w * (pred - x) ** 2).sum() / (w.sum() * x.shape[1]).clamp_min(1)
        logs = {"l2": rec.item()}
        if self.discriminator is None:
            loss = rec
        else:
            grown = (w > 0).to(x)
            fake = x * (1 - grown) + pred * grown
            d = self.discriminator
            frozen = {k: v.detach() for k, v in d.named_parameters()}
            buffers = dict(d.named_buffers())
            g_adv = F.binary_cross_entropy_with_logits(     # generator: fool a frozen copy of D
                functional_call(d, (frozen, buffers), (fake,)), torch.ones(len(x), device=x.device))
            d_real, d_fake = d(x), d(fake.detach())
            d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                      + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            loss = (1 - c.adv_weight) * rec + c.adv_weight * g_adv + d_loss
            logs.update({"g_adv": g_adv.item(), "d_loss": d_loss.item()})
        logs["loss"] = loss.item()
        return StepOutput(loss, logs)

    @torch.no_grad()
    def pictures(self, x):
        mask, inp, pred = self.inpaint(x)
        filled = x * (1 - mask) + pred * mask
        return {"input": denormalize(x).clamp(0, 1), "masked": denormalize(inp).clamp(0, 1),
                "inpainted": denormalize(filled).clamp(0, 1)}

    @property
    def encoder(self) -> nn.Module:
        return self.backbone
