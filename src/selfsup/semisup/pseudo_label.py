"""Pseudo-Label, in its two published forms.

``schedule: lee2013`` - Lee (2013), "Pseudo-Label: the simple and efficient semi-supervised
learning method": the current network's argmax on each unlabeled image, recomputed at every
update, with no confidence threshold, is its label; loss = CE(labeled) + alpha(t) CE(unlabeled,
pseudo-labels), alpha(t) piecewise linear in epochs (0 before T1, ramp to alpha_f at T2), with
dropout. The paper frames it as entropy regularisation.

``schedule: oliver2018`` - the baseline of Oliver et al. (2018) that TorchSSL/USB/the FixMatch
repo call "pseudolabel": keep a pseudo-label only if its confidence >= 0.95, weight 1 ramped
linearly over the first 40% of training.

Both label the same weakly augmented view they train on (no strong view: that is FixMatch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from ..losses.semisup import lee2013_alpha, linear_rampup, pseudo_label_loss
from ..methods import METHODS
from ..methods.base import StepOutput
from .base import Classifier, SemiSupervisedMethod, make_augment, pseudo_label_accuracy


@dataclass
class PseudoLabelConfig:
    num_classes: int = 10
    schedule: str = "lee2013"      # lee2013 | oliver2018
    uratio: float = 1.0            # unlabeled images per labeled image in a batch (TorchSSL: 1)
    # lee2013: alpha(t) with t in epochs over the unlabeled data (paper: alpha_f 3, T1 100, T2 600)
    alpha_f: float = 3.0
    t1: float = 100.0
    t2: float = 600.0
    dropout: float = 0.5           # Lee (2013) trains with dropout
    # oliver2018
    threshold: float = 0.95
    unsup_weight: float = 1.0
    rampup: float = 0.4            # fraction of training for the linear ramp
    ema_decay: float = 0.999
    # set by the entry point: passes over the unlabeled pool per unit of progress
    epochs_total: float = 1.0


@METHODS.register("pseudo_label")
class PseudoLabel(SemiSupervisedMethod):
    Config = PseudoLabelConfig

    def __init__(self, backbone: nn.Module, cfg: PseudoLabelConfig | None = None, view_cfg=None):
        super().__init__()
        self.cfg = cfg = cfg or PseudoLabelConfig()
        if cfg.schedule not in ("lee2013", "oliver2018"):
            raise ValueError(f"method.schedule must be lee2013 or oliver2018, got {cfg.schedule!r}")
        self.model = Classifier(backbone, cfg.num_classes,
                                cfg.dropout if cfg.schedule == "lee2013" else 0.0)
        self.augment = make_augment(view_cfg)
        self.init_ema()

    def views(self, images, batch):
        return [self.augment.weak(images)]

    def unsup_weight(self, progress: float) -> float:
        if self.cfg.schedule == "lee2013":
            c = self.cfg
            return lee2013_alpha(progress * c.epochs_total, c.alpha_f, c.t1, c.t2)
        return self.cfg.unsup_weight * linear_rampup(progress, self.cfg.rampup)

    def training_step(self, views, progress, batch=None) -> StepOutput:
        n_l, y = self.split(batch)
        logits = self.model(views[0])                    # labeled + unlabeled in one pass
        loss_l = F.cross_entropy(logits[:n_l], y)
        thr = 0.0 if self.cfg.schedule == "lee2013" else self.cfg.threshold
        # labels from the same outputs, detached: argmax of the current network
        loss_u, mask = pseudo_label_loss(logits[n_l:], logits[n_l:], thr)
        w = self.unsup_weight(progress)
        loss = loss_l + w * loss_u
        logs = {"loss": loss.item(), "loss_l": loss_l.item(), "loss_u": loss_u.item(),
                "unsup_weight": w, "mask": mask.mean().item()}
        logs.update(pseudo_label_accuracy(logits[n_l:].detach().argmax(1), mask, batch, n_l))
        return StepOutput(loss, logs)
