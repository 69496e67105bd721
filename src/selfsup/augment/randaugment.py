"""Weak and strong augmentation for semi-supervised learning, batched on the device.

Weak (FixMatch, Sec. 3.2): horizontal flip (p=0.5) + translation by up to 12.5% of the side,
done as reflect padding followed by a random crop (USB ``cv_datasets/cifar.py``).

Strong: RandAugment (Cubuk et al., 2020) with the FixMatch "RA" operation list and a random
magnitude per operation and per image (FixMatch App. D), followed by Cutout (DeVries & Taylor,
2017) of a random square up to half the side, filled with grey. Every image draws its own
operations: kornia's ``auto.RandAugment`` picks one policy for the whole batch, which is not the
paper's augmentation, so the per-image draw is done here by grouping images by operation.

All functions take float images [B, 3, H, W] in [0, 1] and return the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.enhance as KE
import kornia.geometry.transform as KT
import torch
from torch import nn

from .views import IMAGENET_MEAN, IMAGENET_STD, normalize

GREY = 0.5


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(degenerate: torch.Tensor, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: degenerate + f (x - degenerate), clipped; f [B]."""
    return (degenerate + f.view(-1, 1, 1, 1) * (x - degenerate)).clamp(0, 1)


def _factor(v: torch.Tensor) -> torch.Tensor:
    return 0.1 + 1.8 * v  # enhance factors in [0.1, 1.9] (google-research/fixmatch augment ops)


def _signed(v: torch.Tensor, max_v: float) -> torch.Tensor:
    return (2 * v - 1) * max_v


def _geometric(fn, x: torch.Tensor, *args) -> torch.Tensor:
    """Apply an affine op with grey fill (kornia fills with zeros)."""
    return fn(x - GREY, *args) + GREY


def autocontrast(x, v):
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(hi > lo, 1.0 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x)


def brightness(x, v):
    return _blend(torch.zeros_like(x), x, _factor(v))


def color(x, v):
    return _blend(_gray(x).expand_as(x), x, _factor(v))


def contrast(x, v):
    return _blend(_gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), x, _factor(v))


def equalize(x, v):
    """PIL ImageOps.equalize per image and channel, vectorised (kornia's loops over images)."""
    b, c, h, w = x.shape
    q = (x * 255).round().clamp(0, 255).long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float))
    # PIL: step = (count - count of the last non-empty bin) // 255; lut = (cumsum + step // 2) // step
    last = 255 - torch.argmax(hist.flip(1).gt(0).float(), dim=1)
    step = torch.div(h * w - hist.gather(1, last[:, None]).squeeze(1), 255, rounding_mode="floor")
    cum = torch.cumsum(hist, 1) - hist                          # counts below each value
    lut = torch.div(cum + torch.div(step, 2, rounding_mode="floor")[:, None],
                    step.clamp_min(1)[:, None], rounding_mode="floor").clamp(0, 255)
    out = lut.gather(1, q) / 255
    out = torch.where((step > 0)[:, None], out, q.float() / 255)  # flat channels stay as they are
    return out.view(b, c, h, w).to(x.dtype)


def identity(x, v):
    return x


def posterize(x, v):
    bits = (4 + torch.round(4 * v)).to(torch.int32)            # keep 4..8 bits
    shift = (8 - bits).view(-1, 1, 1, 1)
    q = (x * 255).round().to(torch.int32)
    return ((q >> shift) << shift).to(x.dtype) / 255


def rotate(x, v):
    return _geometric(KT.rotate, x, _signed(v, 30.0))


def sharpness(x, v):
    # kornia's sharpness: blend with the 3x3-smoothed image, factor 0 = smooth, 1 = original
    return KE.sharpness(x, _factor(v)).clamp(0, 1)


def shear_x(x, v):
    s = torch.stack([_signed(v, 0.3), torch.zeros_like(v)], dim=1)
    return _geometric(KT.shear, x, s)


def shear_y(x, v):
    s = torch.stack([torch.zeros_like(v), _signed(v, 0.3)], dim=1)
    return _geometric(KT.shear, x, s)


def solarize(x, v):
    t = v.view(-1, 1, 1, 1)                                      # threshold in [0, 1]
    return torch.where(x < t, x, 1 - x)


def translate_x(x, v):
    t = torch.stack([_signed(v, 0.3) * x.shape[3], torch.zeros_like(v)], dim=1)
    return _geometric(KT.translate, x, t)


def translate_y(x, v):
    t = torch.stack([torch.zeros_like(v), _signed(v, 0.3) * x.shape[2]], dim=1)
    return _geometric(KT.translate, x, t)


RA_OPS = {"autocontrast": autocontrast, "brightness": brightness, "color": color,
          "contrast": contrast, "equalize": equalize, "identity": identity,
          "posterize": posterize, "rotate": rotate, "sharpness": sharpness,
          "shear_x": shear_x, "shear_y": shear_y, "solarize": solarize,
          "translate_x": translate_x, "translate_y": translate_y}


def rand_augment(x: torch.Tensor, n_ops: int = 2, generator: torch.Generator | None = None,
                 return_ops: bool = False):
    """RandAugment with per-image operations and magnitudes. Returns x (and the op indices
    [B, n_ops] and magnitudes [B, n_ops] when ``return_ops``)."""
    b, names = x.shape[0], list(RA_OPS)
    ops = torch.randint(len(names), (b, n_ops), generator=generator).to(x.device)
    mags = torch.rand(b, n_ops, generator=generator).to(x.device, x.dtype)
    x = x.clone()
    for j in range(n_ops):
        for k, name in enumerate(names):
            sel = (ops[:, j] == k).nonzero().flatten()
            if len(sel):
                x[sel] = RA_OPS[name](x[sel], mags[sel, j]).to(x.dtype)
    return (x, ops, mags) if return_ops else x


def cutout(x: torch.Tensor, max_fraction: float = 0.5, generator: torch.Generator | None = None,
           return_boxes: bool = False):
    """Grey out one square per image: side = u * max_fraction * H (u ~ U(0, 1]), centre uniform
    over the image (the square may be clipped at the border)."""
    b, _, h, w = x.shape
    side = (1 - torch.rand(b, generator=generator)) * max_fraction * min(h, w)
    cy, cx = torch.rand(b, generator=generator) * h, torch.rand(b, generator=generator) * w
    y0, y1 = (cy - side / 2).clamp(0, h), (cy + side / 2).clamp(0, h)
    x0, x1 = (cx - side / 2).clamp(0, w), (cx + side / 2).clamp(0, w)
    ys = torch.arange(h).view(1, h, 1) + 0.5
    xs = torch.arange(w).view(1, 1, w) + 0.5
    inside = ((ys >= y0.view(-1, 1, 1)) & (ys < y1.view(-1, 1, 1))
              & (xs >= x0.view(-1, 1, 1)) & (xs < x1.view(-1, 1, 1))).to(x.device)
    out = torch.where(inside[:, None], torch.full_like(x, GREY), x)
    return (out, torch.stack([y0, x0, y1, x1], 1)) if return_boxes else out


def weak_augment(x: torch.Tensor, translate: float = 0.125, flip_p: float = 0.5,
                 generator: torch.Generator | None = None, return_params: bool = False):
    """Flip + reflect-pad-and-crop translation by up to ``translate`` of the side."""
    b, c, h, w = x.shape
    flip = torch.rand(b, generator=generator) < flip_p
    x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
    p = int(round(translate * h))
    if p > 0:
        padded = nn.functional.pad(x, (p, p, p, p), mode="reflect")
        oy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        rows = (oy.view(-1, 1) + torch.arange(h)).to(x.device)        # [B, H]
        cols = (ox.view(-1, 1) + torch.arange(w)).to(x.device)        # [B, W]
        bi = torch.arange(b, device=x.device).view(-1, 1, 1)
        x = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    else:
        oy = ox = torch.zeros(b, dtype=torch.long)
    if return_params:
        return x.contiguous(), {"flip": flip, "dy": oy - p, "dx": ox - p}
    return x.contiguous()


@dataclass
class SemiAugConfig:
    translate: float = 0.125      # weak: max translation as a fraction of the side
    flip_p: float = 0.5
    ra_ops: int = 2               # strong: RandAugment operations per image
    cutout: float = 0.5           # strong: max Cutout side as a fraction of the side (0 = off)


class WeakStrong(nn.Module):
    """``weak(x)`` and ``strong(x)`` (strong = weak + RandAugment + Cutout), both normalised."""

    def __init__(self, cfg: SemiAugConfig | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.cfg, self.mean, self.std = cfg or SemiAugConfig(), tuple(mean), tuple(std)

    @staticmethod
    def _float(x):
        return x.float().div(255) if x.dtype == torch.uint8 else x

    @torch.no_grad()
    def weak(self, x):
        x = weak_augment(self._float(x), self.cfg.translate, self.cfg.flip_p)
        return normalize(x, self.mean, self.std)

    @torch.no_grad()
    def strong(self, x):
        x = weak_augment(self._float(x), self.cfg.translate, self.cfg.flip_p)
        x = rand_augment(x, self.cfg.ra_ops)
        if self.cfg.cutout > 0:
            x = cutout(x, self.cfg.cutout)
        return normalize(x, self.mean, self.std)

    @torch.no_grad()
    def plain(self, x):
        return normalize(self._float(x), self.mean, self.std)
