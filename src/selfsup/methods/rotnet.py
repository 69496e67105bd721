"""RotNet: Unsupervised Representation Learning by Predicting Image Rotations (Gidaris, Singh &
Komodakis, ICLR 2018).

Defining idea: a network that can tell whether an image is upright or turned by 90, 180 or 270
degrees must recognise the objects in it.

Algorithm (paper Sec. 2; gidariss/FeatureLearningRotNet ``dataloader.py``): every image of the
batch appears in all 4 rotations in the same batch (4B images, labels 0..3); rotations are exact
transposes/flips (no interpolation, no border artefacts that would give the answer away); the
network classifies the rotation with cross-entropy. CIFAR recipe: pad-and-crop + flip before
rotating, SGD Nesterov lr 0.1, wd 5e-4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment.views import ViewConfig, shifted_view
from ..heads.mlp import projection_head
from . import METHODS
from .base import BatchInfo, Method, StepOutput


def rotate_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, C, H, W] (square) -> ([4B, C, H, W], labels [4B]): the batch rotated by 0, 90, 180,
    270 degrees counter-clockwise (label k = k quarter turns), block after block."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation prediction needs square images, got {tuple(x.shape[-2:])}")
    rots = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return torch.cat(rots), labels


@dataclass
class RotNetConfig:
    head: str = "mlp"            # mlp | linear: the classifier on pooled backbone features
    head_hidden_dim: int = 0     # 0 = the backbone's feature dimension
    translate: float = 0.125     # pad-and-crop before rotating (CIFAR recipe)


@METHODS.register("rotnet")
class RotNet(Method):
    Config = RotNetConfig

    def __init__(self, backbone: nn.Module, cfg: RotNetConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or RotNetConfig()
        self.backbone = backbone
        d = backbone.embed_dim
        self.head = projection_head(d, cfg.head_hidden_dim or d, 4, kind=cfg.head,
                                    last_bn=False)
        view_cfg = view_cfg or ViewConfig()
        self.flip_p, self.size = view_cfg.flip_p, view_cfg.size

    @torch.no_grad()
    def views(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [shifted_view(images, self.size, self.cfg.translate, self.flip_p)]

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        x4, labels = rotate_batch(views[0])
        logits = self.head(self.backbone(x4))
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean().item()
        return StepOutput(loss, {"loss": loss.item(), "rotation_acc": acc})

    @property
    def encoder(self) -> nn.Module:
        return self.backbone
