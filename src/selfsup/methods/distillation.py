"""Distillation: a small backbone learns, on unlabeled photos, to reproduce a large frozen teacher's
embeddings.

This is the default pretraining method of the most widely used commercial pretraining product:
a strong, expensive model (a long-trained selfsup run, or a timm/torchvision network with local
weights) teaches the small backbone the user can afford to deploy. The recipe follows "Knowledge
distillation: a good teacher is patient and consistent" (Beyer et al., CVPR 2022): teacher and
student see *the same* augmented view (function matching, consistent), and training is long.

Algorithm:
    v = augment(x)                                   # one view, shared
    t = teacher(resize(v, teacher size))             # frozen, eval mode, no gradient
    s = projector(backbone(v))                       # MLP to the teacher's dimension
    loss = || s/|s| - t/|t| ||^2  (= 2 - 2 cos)      # losses.feature_distillation_loss

The teacher is an input of the run, not part of it: it is not in the checkpoint (a resume loads
it again from ``method.teacher``) and its weights never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ViewAugment, ViewConfig
from ..heads.mlp import projection_head
from ..losses.noncontrastive import feature_distillation_loss
from . import METHODS
from .base import BatchInfo, Method, StepOutput


@dataclass
class DistillationConfig:
    teacher: str = ""             # a selfsup run folder (its encoder) or a weights file
    teacher_backbone: str = ""    # a weights file's architecture (selfsup name, timm:, torchvision:)
    teacher_width: float = 1.0
    teacher_image_size: int = 0   # the teacher's input size (0: a run's own size, else the view's)
    proj_hidden_dim: int = 2048


def load_teacher(cfg: DistillationConfig) -> tuple[nn.Module, int]:
    """(frozen teacher in eval mode, its input size or 0)."""
    from .. import backbones
    from ..backbones.external import InitError, load_init

    path = Path(cfg.teacher).expanduser()
    if cfg.teacher_backbone:
        net = backbones.build(cfg.teacher_backbone, cfg.teacher_width,
                              image_size=cfg.teacher_image_size or 32)
        load_init(net, path)
        size = cfg.teacher_image_size
    elif path.is_dir():
        from ..pretrain import load_encoder

        run = path / "pretrain" if (path / "pretrain").is_dir() else path
        net, tcfg = load_encoder(run)
        size = cfg.teacher_image_size or tcfg.augment.size
    else:
        raise InitError(f"method.teacher={cfg.teacher}: give a selfsup run folder, or a weights "
                        f"file together with method.teacher_backbone (its architecture)")
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval(), size


@METHODS.register("distillation")
class Distillation(Method):
    Config = DistillationConfig

    def __init__(self, backbone: nn.Module, cfg: DistillationConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DistillationConfig()
        self.backbone = backbone
        self.augment = ViewAugment(view_cfg or ViewConfig())
        self.projector: nn.Module = nn.Identity()
        self.__dict__["_teacher"] = None       # not a sub-module: never checkpointed or trained
        self.teacher_size = 0
        if cfg.teacher:
            self.set_teacher(*load_teacher(cfg))

    def set_teacher(self, teacher: nn.Module, image_size: int = 0) -> None:
        """Use ``teacher`` (frozen); builds the projector to its embedding size (call before the
        optimizer is made, as the loop does)."""
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.__dict__["_teacher"] = teacher.eval()
        self.teacher_size = image_size
        self.projector = projection_head(self.backbone.embed_dim, self.cfg.proj_hidden_dim,
                                         int(teacher.embed_dim))

    def views(self, images):
        return [self.augment(images)]

    @torch.no_grad()
    def _targets(self, v: torch.Tensor) -> torch.Tensor:
        t = self.__dict__["_teacher"]
        if t is None:
            raise RuntimeError("distillation has no teacher: set method.teacher")
        p = next(iter(t.parameters()), None)
        if p is not None and p.device != v.device:
            t.to(v.device)
        if self.teacher_size and v.shape[-1] != self.teacher_size:
            v = F.interpolate(v, size=(self.teacher_size, self.teacher_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return t.eval()(v).float()

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        v = views[0]
        target = self._targets(v)
        s = self.projector(self.backbone(v))
        loss = feature_distillation_loss(s, target)
        cos = 1.0 - loss.detach() / 2
        return StepOutput(loss, {"loss": loss.item(), "cosine": cos.item()},
                          embeddings=s.detach())

    @property
    def encoder(self):
        return self.backbone
