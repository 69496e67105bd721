"""Batched, on-device view augmentation with kornia (independent random draws per sample).

``ViewAugment(cfg)(x)`` takes float images [B,3,H,W] in [0,1] on any device and returns normalised
views; with ``return_params=True`` it also returns the parameters sampled for each image, the
inputs AugSelf (Lee et al., 2021) predicts: crop box, flip, colour-jitter factors, grayscale, blur.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ViewConfig:
    """The SimCLR view (Chen et al., 2020, App. A). Toggle ``crop``/``color`` for ablations."""

    size: int = 32
    crop: bool = True
    scale_min: float = 0.08
    scale_max: float = 1.0
    flip_p: float = 0.5
    color: bool = True
    jitter_strength: float = 1.0   # SimCLR colour strength s: scales the four jitter magnitudes
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0            # SimCLR uses p=0.5 at ImageNet scale and none on CIFAR
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0


def view_preset(size: int) -> ViewConfig:
    """Presets: small images (<= 64 px, CIFAR-like) have no blur; 96/224 px get blur with p=0.5
    and a kernel of about 10% of the image side, as in SimCLR's ImageNet recipe."""
    if size <= 64:
        return ViewConfig(size=size)
    return ViewConfig(size=size, blur_p=0.5)


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def to_unit_float(images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 or [0, 1] float images [B, 3, H, W] -> float in [0, 1], resized (bilinear,
    antialiased) to ``size`` x ``size`` when they are another size."""
    x = images.float().div(255) if images.dtype == torch.uint8 else images
    if size is not None and x.shape[-2:] != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                      align_corners=False)
    return x


def shifted_view(images: torch.Tensor, size: int, translate: float = 0.0,
                 flip_p: float = 0.5) -> torch.Tensor:
    """The light view of pretext and generative tasks: resize, flip, reflect-pad translation by
    up to ``translate`` of the side (0 = none), normalise."""
    from .randaugment import weak_augment

    return normalize(weak_augment(to_unit_float(images, size), translate, flip_p))


class ViewAugment(nn.Module):
    def __init__(self, cfg: ViewConfig, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.cfg, self.mean, self.std = cfg, tuple(mean), tuple(std)
        s = cfg.jitter_strength
        self.crop = (K.RandomResizedCrop((cfg.size, cfg.size), scale=(cfg.scale_min, cfg.scale_max))
                     if cfg.crop else None)
        self.flip = K.RandomHorizontalFlip(p=cfg.flip_p) if cfg.flip_p > 0 else None
        self.jitter = (K.ColorJitter(cfg.brightness * s, cfg.contrast * s, cfg.saturation * s,
                                     cfg.hue * s, p=cfg.jitter_p) if cfg.color else None)
        self.gray = K.RandomGrayscale(p=cfg.gray_p) if (cfg.color and cfg.gray_p > 0) else None
        self.blur = None
        if cfg.blur_p > 0:
            k = max(3, int(0.1 * cfg.size) // 2 * 2 + 1)  # odd kernel, ~10% of the side
            self.blur = K.RandomGaussianBlur((k, k), (cfg.blur_sigma_min, cfg.blur_sigma_max),
                                             p=cfg.blur_p)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, return_params: bool = False):
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        b, _, h, w = x.shape
        params: dict[str, torch.Tensor] = {}
        if self.crop is not None:
            x = self.crop(x)
            # [B,4,2] corners (x, y) as inclusive pixel indices; box edges are x0 and x1 + 1
            src = self.crop._params["src"].to(x.device)
            x0, y0 = src[:, 0, 0], src[:, 0, 1]
            x1, y1 = src[:, 2, 0] + 1, src[:, 2, 1] + 1
            # normalised (centre x, centre y, width, height)
            params["crop"] = torch.stack(
                [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], 1)
        elif x.shape[-2:] != (self.cfg.size, self.cfg.size):
            x = nn.functional.interpolate(x, size=(self.cfg.size, self.cfg.size), mode="bilinear",
                                          antialias=True, align_corners=False)
        if self.flip is not None:
            x = self.flip(x)
            params["flip"] = self.flip._params["batch_prob"].to(x.device).float()
        if self.jitter is not None:
            x = self.jitter(x)
            p = self.jitter._params
            params["color"] = torch.stack([p[k].to(x.device).float() for k in (
                "brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")], 1)
            params["color_applied"] = p["batch_prob"].to(x.device).float()
        if self.gray is not None:
            x = self.gray(x)
            params["gray"] = self.gray._params["batch_prob"].to(x.device).float()
        if self.blur is not None:
            x = self.blur(x)
            params["blur"] = self.blur._params["batch_prob"].to(x.device).float()
        x = normalize(x.clamp_(0, 1), self.mean, self.std)
        return (x, params) if return_params else x
