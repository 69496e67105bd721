"""Knowledge distillation (Hinton, Vinyals & Dean, 2015): a student learns the teacher's softened
outputs.

Loss = alpha * T^2 KL(softmax(t/T) || softmax(s/T)) on every image (labeled and unlabeled: the
teacher labels the unlabeled ones) + (1 - alpha) * CE(hard label) on the labeled ones. The T^2
keeps the soft term's gradient on the same scale whatever T is. The teacher is frozen, runs in
eval mode on the same (weak) view as the student, and may have any architecture: the student is
any registered backbone (``model.backbone``), e.g. a smaller one for deployment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..losses.semisup import kd_loss
from ..methods import METHODS
from ..methods.base import StepOutput
from .base import Classifier, SemiSupervisedMethod, make_augment


@dataclass
class DistillConfig:
    num_classes: int = 10
    teacher: str | None = None     # run directory of a trained classifier (selfsup semisup ...)
    temperature: float = 4.0
    alpha: float = 0.9             # weight of the soft (teacher) term
    uratio: float = 1.0
    ema_decay: float = 0.999


@METHODS.register("distill")
class Distill(SemiSupervisedMethod):
    Config = DistillConfig

    def __init__(self, backbone: nn.Module, cfg: DistillConfig | None = None, view_cfg=None):
        super().__init__()
        self.cfg = cfg = cfg or DistillConfig()
        self.model = Classifier(backbone, cfg.num_classes)
        self.augment = make_augment(view_cfg)
        self.teacher: nn.Module | None = None
        if cfg.teacher:
            from ..semisupervised import load_classifier

            self.set_teacher(load_classifier(cfg.teacher)[0])
        self.init_ema()

    def set_teacher(self, teacher: nn.Module) -> None:
        """Freeze ``teacher`` (a module mapping images to logits) and use it from now on. Kept
        out of ``state_dict``: the teacher is an input of the run, not something it learns."""
        for p in teacher.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "teacher", teacher.eval())

    def _apply(self, fn, *args, **kwargs):  # move the (unregistered) teacher with the student
        super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    def views(self, images, batch):
        return [self.augment.weak(images)]

    def training_step(self, views, progress, batch=None) -> StepOutput:
        if self.teacher is None:
            raise ValueError("distill needs a teacher: set method.teacher=RUN_DIR (a finished "
                             "selfsup semisup run)")
        n_l, y = self.split(batch)
        x = views[0]
        with torch.no_grad():
            self.teacher.eval()
            t_logits = self.teacher(x)
        s_logits = self.model(x)
        soft = kd_loss(s_logits, t_logits, self.cfg.temperature)
        hard = F.cross_entropy(s_logits[:n_l], y)
        loss = self.cfg.alpha * soft + (1 - self.cfg.alpha) * hard
        agree = (s_logits.argmax(1) == t_logits.argmax(1)).float().mean().item()
        return StepOutput(loss, {"loss": loss.item(), "loss_kd": soft.item(),
                                 "loss_ce": hard.item(), "teacher_agreement": agree})
