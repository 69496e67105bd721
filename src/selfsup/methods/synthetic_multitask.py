"""Cross-Domain Self-supervised Multi-task Feature Learning using Synthetic Imagery (Ren & Lee,
CVPR 2018).

Defining idea: a renderer gives every synthetic image its depth, surface normals and contours
for free; a network that predicts all three learns geometry-aware features, and an adversarial
loss on its features makes synthetic and real images look alike to it, so the features transfer
to real photos.

Algorithm (jason718/game-feature-learning ``src/model.py``): a shared encoder and three task
heads (depth, surface normals, instance contours) learn from synthetic scenes; a discriminator on
the encoder's last convolutional feature map tells synthetic (0) from real (1) images (vanilla
GAN loss); the encoder also minimises the discriminator's loss on synthetic features labelled
real, weighted ``da_weight``. Losses (``losses/geometry.py``): depth 0.5 (MSE + 0.5 mean
difference^2), normals 1 - cosine, contours BCE weighted per image by its non-contour/contour
pixel ratio; weights depth 5, normals 10, contours 1, domain 0.05 (``configs/alexnet.yaml``).
Both domains are fed as grey images (one random channel repeated, ``GRAY: True``).

Here: the scenes come from ``data/render.py`` (random spheres and boxes on a ground plane before
a wall, exact geometry by ray casting) rendered on the fly at the training size, and the real
images are the run's dataset (CIFAR-10 or the user's folder). Differences from the official
code: one optimizer for all networks (the discriminator's loss reaches only its own weights, the
encoder's adversarial term runs through a frozen copy of them, as in ``inpainting``) instead of
Adam for the encoder and SGD for the discriminator; no history pool of past features for the
discriminator; decoder heads of nearest-upsampling convolutions instead of transposed ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from ..augment.views import IMAGENET_MEAN, IMAGENET_STD, ViewConfig, normalize, shifted_view
from ..data.render import random_scenes, render
from ..heads.decoder import ConvDecoder
from ..losses.geometry import contour_loss, depth_loss, gan_bce, normal_loss
from ..report.pictures import denormalize
from . import METHODS
from .base import BatchInfo, Method, StepOutput


class FeatureDiscriminator(nn.Module):
    """Feature map [B, C, h, w] -> one logit per image: two 3x3 convolutions with BN and
    LeakyReLU(0.2) (the second with stride 2), a 1x1 convolution, averaged over positions."""

    def __init__(self, channels: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden, 2 * hidden, 3, stride=2, padding=1), nn.BatchNorm2d(2 * hidden),
            nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(2 * hidden, 1, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f).mean((1, 2, 3))


@dataclass
class SyntheticMultitaskConfig:
    depth_weight: float = 5.0
    normal_weight: float = 10.0
    contour_weight: float = 1.0
    da_weight: float = 0.05        # 0: no domain adaptation (no discriminator)
    gray: bool = True              # both domains as grey images (the official GRAY: True)
    depth_scale: float = 10.0      # depth targets in units of 10 (the scenes span ~2-15)
    max_spheres: int = 3
    max_boxes: int = 2
    supersample: int = 2           # anti-aliasing of the rendered images


@METHODS.register("synthetic_multitask")
class SyntheticMultitask(Method):
    Config = SyntheticMultitaskConfig

    def __init__(self, backbone: nn.Module, cfg: SyntheticMultitaskConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SyntheticMultitaskConfig()
        self.backbone = backbone
        s = backbone.map_stride
        self.depth_head = ConvDecoder(backbone.embed_dim, 1, s)
        self.normal_head = ConvDecoder(backbone.embed_dim, 3, s)
        self.contour_head = ConvDecoder(backbone.embed_dim, 1, s)
        self.discriminator = FeatureDiscriminator(backbone.embed_dim) if cfg.da_weight > 0 else None
        view_cfg = view_cfg or ViewConfig()
        self.size, self.flip_p = view_cfg.size, view_cfg.flip_p

    def _gray(self, x: torch.Tensor, channel: int) -> torch.Tensor:
        """[0, 1] images -> one channel repeated three times (when ``gray``), normalised."""
        if self.cfg.gray:
            x = x[:, channel:channel + 1].expand(-1, 3, -1, -1)
        return normalize(x, IMAGENET_MEAN, IMAGENET_STD)

    def render(self, n: int) -> dict:
        c = self.cfg
        return render(random_scenes(n, c.max_spheres, c.max_boxes), self.size, c.supersample)

    @torch.no_grad()
    def views(self, images):
        """[real images, synthetic images, their depth, normals, contours]."""
        real = denormalize(shifted_view(images, self.size, 0.0, self.flip_p)).clamp(0, 1)
        scene = self.render(len(images))
        ch = int(torch.randint(0, 3, ()))
        return [self._gray(real, ch), self._gray(scene["image"], ch), scene["depth"],
                scene["normals"], scene["contours"]]

    def predict(self, x: torch.Tensor):
        """normalised images -> (feature map, depth [B, 1], normals [B, 3], contour logits)."""
        f = self.backbone.forward_map(x)
        return f, self.depth_head(f), self.normal_head(f), self.contour_head(f)

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        c = self.cfg
        real, syn, depth, normals, contours = views
        f_syn, d, n, e = self.predict(syn)
        l_d = depth_loss(d, depth / c.depth_scale)
        l_n = normal_loss(n, normals)
        l_c = contour_loss(e, contours)
        loss = c.depth_weight * l_d + c.normal_weight * l_n + c.contour_weight * l_c
        logs = {"depth": l_d.item(), "normals": l_n.item(), "contours": l_c.item()}
        if self.discriminator is not None:
            disc = self.discriminator
            with torch.no_grad():
                f_real = self.backbone.forward_map(real)
            frozen = {k: v.detach() for k, v in disc.named_parameters()}
            g_adv = gan_bce(functional_call(disc, (frozen, dict(disc.named_buffers())), (f_syn,)),
                            True)                    # the encoder: synthetic features look real
            p_syn, p_real = disc(f_syn.detach()), disc(f_real)
            d_loss = 0.5 * (gan_bce(p_syn, False) + gan_bce(p_real, True))
            loss = loss + c.da_weight * g_adv + d_loss
            acc = 0.5 * ((p_syn < 0).float().mean() + (p_real > 0).float().mean())
            logs.update({"g_adv": g_adv.item(), "d_loss": d_loss.item(), "d_acc": acc.item()})
        logs["loss"] = loss.item()
        return StepOutput(loss, logs)

    @torch.no_grad()
    def pictures(self, x):
        """Rendered scenes with their true and predicted depth, normals and contours, and the
        real images as the network sees them."""
        scene = self.render(len(x))
        syn = self._gray(scene["image"], 1)
        _, d, n, e = self.predict(syn)

        def span(t):   # each depth map stretched to [0, 1] with the truth's range
            lo = scene["depth"].amin((2, 3), keepdim=True)
            hi = scene["depth"].amax((2, 3), keepdim=True)
            return ((t - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1).expand(-1, 3, -1, -1)

        unit = nn.functional.normalize(n, dim=1)
        return {"render": scene["image"], "render_as_seen": denormalize(syn).clamp(0, 1),
                "depth": span(scene["depth"]), "depth_pred": span(d * self.cfg.depth_scale),
                "normals": scene["normals"] * 0.5 + 0.5, "normals_pred": unit * 0.5 + 0.5,
                "contours": scene["contours"].expand(-1, 3, -1, -1),
                "contours_pred": torch.sigmoid(e).expand(-1, 3, -1, -1),
                "real_as_seen": denormalize(self._gray(denormalize(x).clamp(0, 1), 1)).clamp(0, 1)}

    @property
    def encoder(self) -> nn.Module:
        return self.backbone
