"""The method contract (GUIDE section 3). A contract only: no training logic lives here.

A method is an ``nn.Module`` with
- ``Config``: a dataclass whose defaults equal the paper's;
- ``__init__(backbone, cfg, view_cfg)``: composes heads, losses and target networks;
- ``views(images) -> list[Tensor]``: the augmented views it trains on (run by the loop, timed as
  data path, no gradients);
- ``training_step(views, progress, batch) -> StepOutput``: computes the loss; never calls
  backward/step; ``batch`` carries the images' dataset indices and labels (-1 = unlabeled) for
  the methods that need them (SupCon, DeepCluster);
- ``prepare(images)``: fit data-dependent state before training (a no-op by default);
- ``after_optimizer_step(progress)``: EMA / queue updates (a no-op by default);
- ``encoder``: the module used by evaluation and export.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class BatchInfo:
    index: torch.Tensor   # [B] dataset indices of the images in this batch
    label: torch.Tensor   # [B] class indices, -1 where unlabeled
    # [B] the true classes where the dataset knows them (-1 elsewhere), never used for training:
    # semi-supervised methods log their pseudo-labels' accuracy against it (diagnostics only)
    hidden: torch.Tensor | None = None


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    # embeddings a monitor may use for collapse metrics (detached)
    embeddings: torch.Tensor | None = None


class Method(nn.Module, abc.ABC):
    Config: type = object

    @abc.abstractmethod
    def views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """uint8 or [0, 1] float images [B, 3, H, W] -> the augmented, normalised views."""

    @abc.abstractmethod
    def training_step(self, views: list[torch.Tensor], progress: float,
                      batch: BatchInfo | None = None) -> StepOutput:
        """The loss on these views at this point of training (progress in [0, 1])."""

    def forward(self, views: list[torch.Tensor], progress: float,
                batch: BatchInfo | None = None) -> StepOutput:
        """``training_step``: the loop calls the method through ``forward`` so that
        DistributedDataParallel sees the pass (and averages the gradients across ranks)."""
        return self.training_step(views, progress, batch)

    def setup(self, num_samples: int) -> None:
        """Called by the loop with the dataset size before any checkpoint is loaded (methods
        with a per-image memory allocate it here). A no-op by default."""
        return None

    def prepare(self, images: torch.Tensor) -> None:
        """Called by the loop once before training (before a checkpoint is loaded) with a seeded
        sample of up to 4,096 training images (uint8 [N, 3, H, W]): methods that fit something
        to the data first (iGPT's colour palette) do it here. A no-op by default."""
        return None

    def after_optimizer_step(self, progress: float) -> None:
        return None

    @property
    @abc.abstractmethod
    def encoder(self) -> nn.Module:
        """The backbone whose features evaluation and export use."""
