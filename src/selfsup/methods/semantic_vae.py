"""Semi-supervised segmentation with a generative model of images and their label maps (Li et al.,
CVPR 2021, "Semantic Segmentation with Generative Models", SemanticGAN), with a VAE as the
generative model.

Defining idea: learn p(x, y), images and label maps together. Many unlabeled images teach the
model of x; a few labeled masks teach the label branch, which reads the generator's features.
At test time an image is *inverted*: its latent code is found by fitting the generator's image
to it, and the label map is read off the generator at that code. Because the label comes from the
generator, not from a discriminative network, it degrades gracefully when the test images look
different from the training ones (the paper's out-of-domain claim).

Algorithm (nv-tlabs/semanticGAN_code): a StyleGAN2 generator with a label branch on its features;
an image discriminator on unlabeled images; an image-and-label discriminator on the labeled
pairs (the label branch learns only through it); an encoder trained afterwards to invert the
generator; inference (``inference.py``) starts from the encoder's code and runs 100 Adam steps
(lr 0.1, ramp up over 5%, cosine ramp down over the last 25%) on LPIPS + 0.1 MSE between the
generated and the test image + 1e-3 ||code - E(G(code))||^2, then takes the label branch's argmax.

Here, and why: a VAE instead of the GAN. On 2 CPU cores a StyleGAN2 with two discriminators, R1
and path-length regularisation does not train in minutes, while a VAE does, and it brings the
encoder the paper trains separately. The generative model is p(z) p(x|z) p(y|z): the decoder
(``SceneGenerator``) maps z to a feature map, an image head and a label head read it. Unlabeled
images train the image model by the ELBO; labeled pairs by the joint ELBO of (x, y), whose
label term ``label_weight * -log p(y|z)`` replaces the paper's image-and-label discriminator as
the way the joint distribution is learnt (``losses.reconstruction.joint_negative_elbo``).
Inversion as the official inference: the encoder's mean as the start, Adam with the same lr
schedule and step count on -log p(x|z) (the model's own likelihood; no LPIPS: its VGG weights
cannot be downloaded here) + the prior's 1/2 ||z||^2 + the official 1e-3 encoder-consistency
term. p(x|z) is Gaussian with std ``pixel_sigma`` 0.1: with Bernoulli pixels (the repository's
``vae``) the image term of these textured scenes has a floor of ~1,440 nats per image and a
per-image mean colour already scores ~1,565, so the whole layout is worth < 10% of the term and
the latent learns colours, not geometry (measured, BENCHMARKS 8.3); ``pixel_sigma: 0`` restores
Bernoulli pixels. The labeled masks are ``label_count`` rendered scenes of the
``scenes`` dataset's default appearance (``data.scenes.labeled_scenes``, seeded by
``label_seed``; none of them is a training or test image), kept in the method's state.

``generative: false`` is the matched labels-only control: the same encoder, decoder and label
head, trained on the same labeled masks with the same flips, optimizer and steps, by the label
term alone (z = the encoder's mean; no image term, no KL, no unlabeled images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.scenes import labeled_scenes
from ..augment.views import ViewConfig, normalize, shifted_view, to_unit_float
from ..losses.reconstruction import image_nll, joint_negative_elbo, label_map_nll
from ..report.pictures import denormalize
from . import METHODS
from .base import BatchInfo, Method, StepOutput

# one colour per class for pictures: ground, wall, sphere, box
PALETTE = torch.tensor([[0.55, 0.35, 0.15], [0.25, 0.45, 0.85], [0.95, 0.8, 0.1],
                        [0.85, 0.15, 0.2]])


def colour_labels(labels: torch.Tensor) -> torch.Tensor:
    """[B, H, W] class indices (-1: black) -> [B, 3, H, W] colours in [0, 1]."""
    pal = torch.cat([PALETTE, torch.zeros(1, 3)])
    k = len(PALETTE)
    return pal[torch.where(labels < 0, torch.full_like(labels, k), labels.clamp_max(k))
               ].permute(0, 3, 1, 2)


class SceneGenerator(nn.Module):
    """z [B, d] -> (image logits [B, 3, S, S], label logits [B, K, S, S]): a linear map to a
    ``channels`` x 4 x 4 map, log2(S / 4) stages of (nearest x2, 3x3 conv, BN, ReLU) halving the
    channels (at least 32); a 3x3 conv image head and a two-layer label branch on the last map."""

    def __init__(self, latent_dim: int, size: int, num_classes: int, channels: int = 256):
        super().__init__()
        n = int(round(math.log2(size / 4)))
        if 4 * 2 ** n != size:
            raise ValueError(f"the generator needs an image size of 4 x a power of two, got {size}")
        self.channels = channels
        self.from_z = nn.Linear(latent_dim, channels * 16)
        layers, c = [], channels
        for _ in range(n):
            c_out = max(32, c // 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c = c_out
        self.body = nn.Sequential(*layers)
        self.image_head = nn.Conv2d(c, 3, 3, padding=1)
        self.label_head = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
                                        nn.Conv2d(c, num_classes, 1))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(F.relu(self.from_z(z)).view(len(z), self.channels, 4, 4))
        return self.image_head(f), self.label_head(f)


@dataclass
class SemanticVAEConfig:
    latent_dim: int = 128
    beta: float = 1.0               # KL weight (1: the ELBO)
    # p(x|z): Gaussian pixels with this std (in [0, 1] units); 0 = Bernoulli pixels. With
    # Bernoulli pixels the image term barely sees geometry (BENCHMARKS 8.3)
    pixel_sigma: float = 0.1
    label_weight: float = 1.0       # weight of -log p(y|z) in the labeled pairs' joint ELBO
    label_count: int = 20           # labeled masks (rendered scenes, default appearance)
    label_seed: int = 0             # which ones (data.scenes.labeled_scenes)
    labeled_batch: int = 16         # labeled pairs per step (with replacement when fewer)
    num_classes: int = 4            # ground, wall, sphere, box
    generator_channels: int = 256
    generative: bool = True         # false: the labels-only control (same network, label loss)
    invert_steps: int = 100         # test-time inversion (the official inference's default)
    invert_lr: float = 0.1
    invert_encoder_weight: float = 1e-3


def invert_lr(t: float, lr: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """The official inference's learning rate at fraction ``t`` of the steps: linear ramp up over
    the first 5%, cosine ramp down over the last 25%."""
    ramp = min(1.0, (1 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return lr * ramp * min(1.0, t / rampup)


@METHODS.register("semantic_vae")
class SemanticVAE(Method):
    Config = SemanticVAEConfig

    def __init__(self, backbone: nn.Module, cfg: SemanticVAEConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SemanticVAEConfig()
        self.backbone = backbone
        view_cfg = view_cfg or ViewConfig()
        self.size, self.flip_p = view_cfg.size, view_cfg.flip_p
        # the code must say where things are: mu and log sigma^2 from the whole feature map
        # (flattened), not from its average over positions
        cells = max(1, self.size // backbone.map_stride) ** 2
        self.to_stats = nn.Linear(backbone.embed_dim * cells, 2 * cfg.latent_dim)
        self.generator = SceneGenerator(cfg.latent_dim, self.size, cfg.num_classes,
                                        cfg.generator_channels)
        if cfg.label_count < 1:
            raise ValueError(f"method.label_count must be at least 1, got {cfg.label_count}")
        images, masks = labeled_scenes(cfg.label_count, self.size, cfg.label_seed)
        self.register_buffer("labeled_images", torch.from_numpy(images).permute(0, 3, 1, 2)
                             .contiguous())
        self.register_buffer("labeled_masks", torch.from_numpy(masks))

    @torch.no_grad()
    def views(self, images):
        return [shifted_view(images, self.size, 0.0, self.flip_p)]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.backbone.forward_map(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    @torch.no_grad()
    def labeled_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of the labeled pairs, each flipped (image and mask together) with p flip_p."""
        n = len(self.labeled_masks)
        idx = torch.randint(0, n, (self.cfg.labeled_batch,), device=self.labeled_masks.device)
        x = to_unit_float(self.labeled_images[idx], self.size)
        y = self.labeled_masks[idx]
        flip = torch.rand(len(idx), device=x.device) < self.flip_p
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        return normalize(x), y

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        c = self.cfg
        x_l, y_l = self.labeled_batch()
        if not c.generative:       # the labels-only control
            mu, _ = self.encode(x_l)
            _, seg = self.generator(mu)
            loss = (c.label_weight * label_map_nll(seg, y_l)).mean()
            acc = (seg.argmax(1) == y_l)[y_l >= 0].float().mean()
            return StepOutput(loss, {"loss": loss.item(), "label_nll": loss.item(),
                                     "labeled_pixel_acc": acc.item()}, embeddings=mu.detach())
        x_u = views[0]
        x = torch.cat([x_u, x_l])
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()             # reparameterisation
        img, seg = self.generator(z)
        target = denormalize(x).clamp(0, 1)
        u = len(x_u)
        sigma = c.pixel_sigma or None
        loss_u = joint_negative_elbo(img[:u], target[:u], mu[:u], logvar[:u], c.beta,
                                     pixel_sigma=sigma)
        loss_l = joint_negative_elbo(img[u:], target[u:], mu[u:], logvar[u:], c.beta,
                                     seg[u:], y_l, c.label_weight, sigma)
        loss = loss_u.mean() + loss_l.mean()
        with torch.no_grad():
            rec = image_nll(img, target, sigma)
            lab = label_map_nll(seg[u:], y_l)
            acc = (seg[u:].argmax(1) == y_l)[y_l >= 0].float().mean()
        return StepOutput(loss, {"loss": loss.item(), "reconstruction": rec.mean().item(),
                                 "kl": (loss_u.mean() - rec[:u].mean()).item() / max(c.beta, 1e-12),
                                 "label_nll": lab.mean().item(),
                                 "labeled_pixel_acc": acc.item()}, embeddings=mu[:u].detach())

    def invert(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Latent codes [B, d] of normalised images ``x``: the encoder's mean, then (generative
        model only) ``steps`` Adam steps on -log p(x|z) + 1/2 ||z||^2 + the encoder-consistency
        term, with the official inference's learning-rate schedule. Call in eval mode."""
        c = self.cfg
        steps = c.invert_steps if steps is None else steps
        with torch.no_grad():
            z0, _ = self.encode(x)
        if not c.generative or steps <= 0:
            return z0
        target = denormalize(x).clamp(0, 1)
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=c.invert_lr)
        for i in range(steps):
            opt.param_groups[0]["lr"] = invert_lr(i / steps, c.invert_lr)
            img, _ = self.generator(z)
            loss = image_nll(img, target, c.pixel_sigma or None) + 0.5 * z.pow(2).sum(1)
            if c.invert_encoder_weight:
                back, _ = self.encode(normalize(torch.sigmoid(img)))
                loss = loss + c.invert_encoder_weight * (z - back.detach()).pow(2).sum(1)
            grad, = torch.autograd.grad(loss.sum(), z)
            opt.zero_grad(set_to_none=True)
            z.grad = grad
            opt.step()
        return z.detach()

    def segment(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Normalised images [B, 3, H, W] -> class maps [B, H, W] (eval mode)."""
        z = self.invert(x, steps)
        with torch.no_grad():
            return self.generator(z)[1].argmax(1)

    @torch.no_grad()
    def pictures(self, x):
        """Generated image / label-map pairs (z from the prior), the labeled pairs with the
        model's labels, and real images with their reconstructions and labels (encoder only)."""
        n = len(x)
        z = torch.randn(n, self.cfg.latent_dim, device=x.device)
        img, seg = self.generator(z)
        xl, yl = self.labeled_images[:n], self.labeled_masks[:n]
        xl_n = normalize(to_unit_float(xl, self.size))
        mu_l, _ = self.encode(xl_n)
        mu, _ = self.encode(x)
        rec, seg_x = self.generator(mu)
        return {"generated": torch.sigmoid(img), "generated_labels": colour_labels(seg.argmax(1)),
                "labeled": denormalize(xl_n).clamp(0, 1), "labeled_truth": colour_labels(yl),
                "labeled_predicted": colour_labels(self.generator(mu_l)[1].argmax(1)),
                "input": denormalize(x).clamp(0, 1), "reconstruction": torch.sigmoid(rec),
                "input_labels": colour_labels(seg_x.argmax(1))}

    @property
    def encoder(self) -> nn.Module:
        return self.backbone
