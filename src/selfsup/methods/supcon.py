"""SupCon: Supervised Contrastive Learning (Khosla et al., 2020).

Defining idea: contrastive learning where every image of the same class is a positive, not only
the other view of the same image. Without labels it reduces to SimCLR's loss.

Algorithm (paper, Sec. 3.2, L_out): two views per image -> encoder -> MLP head -> normalised
z; loss = mean over anchors of -(1/|P(i)|) sum_{p in P(i)} log softmax_i(z_i . z_p / tau),
scaled by tau / 0.07. Unlabeled images (label -1) are their own class: SimCLR for them.

``loss: ce`` is the paper's cross-entropy baseline as a matched control (HobbitLong/SupContrast
``main_ce.py`` trains it with the same augmentation): the same encoder, the same two augmented
views of every image, optimizer, batch and steps, but a linear classifier on the encoder's
features trained with cross-entropy on each view (unlabeled images are skipped), instead of the
head and the contrastive loss. Only the loss differs between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..augment import ViewAugment, ViewConfig
from ..heads.mlp import projection_head
from ..losses import supcon
from ..nn.distributed import gather, gather_with_grad
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class SupConConfig:
    temperature: float = 0.1
    base_temperature: float = 0.07
    head_hidden_dim: int = 0          # 0 = backbone dimension (SupContrast 'mlp' head)
    head_out_dim: int = 128
    loss: str = "supcon"              # supcon | ce (the matched cross-entropy control)
    num_classes: int = 10             # ce only: the classifier's outputs


@METHODS.register("supcon")
class SupCon(Method):
    Config = SupConConfig
    sync_bn = True   # the paper syncs BatchNorm across devices

    def __init__(self, backbone: nn.Module, cfg: SupConConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SupConConfig()
        self.backbone = backbone
        d = backbone.embed_dim
        if cfg.loss not in ("supcon", "ce"):
            raise ValueError(f"method.loss must be supcon or ce, got {cfg.loss!r}")
        if cfg.loss == "ce":
            self.head = nn.Linear(d, cfg.num_classes)
        else:
            self.head = projection_head(d, cfg.head_hidden_dim or d, cfg.head_out_dim,
                                        batch_norm=False)
        self.augment = ViewAugment(view_cfg or ViewConfig())

    def views(self, images):
        return [self.augment(images), self.augment(images)]

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        if batch is None:
            raise ValueError("supcon needs labels: train it on a labeled dataset")
        n = views[0].shape[0]
        z = self.head(self.backbone(torch.cat(views)))
        if self.cfg.loss == "ce":
            y = batch.label.repeat(2)
            if (y >= self.cfg.num_classes).any():
                raise ValueError(f"a label >= method.num_classes ({self.cfg.num_classes}): set "
                                 f"method.num_classes to the number of classes")
            loss = nn.functional.cross_entropy(z, y, ignore_index=-1) if (y >= 0).any() \
                else z.sum() * 0.0
            acc = (z.argmax(1) == y)[y >= 0].float().mean() if (y >= 0).any() else z.new_zeros(())
            return StepOutput(loss, {"loss": loss.item(), "train_acc": acc.item(),
                                     "labeled_fraction": float((y[:n] >= 0).float().mean())},
                              embeddings=z[:n].detach())
        labels = batch.label.clone()
        unlabeled = labels < 0
        # each unlabeled image is a class of its own (ids beyond every real class)
        labels[unlabeled] = labels.max().clamp(min=0) + 1 + batch.index[unlabeled]
        feats = torch.stack([z[:n], z[n:]], dim=1)                  # [N, 2, D]
        loss = supcon(gather_with_grad(feats), gather(labels), self.cfg.temperature,
                      self.cfg.base_temperature)
        return StepOutput(loss, {"loss": loss.item(), "labeled_fraction":
                                 float((~unlabeled).float().mean())}, embeddings=z[:n].detach())

    @property
    def encoder(self):
        return self.backbone
