"""Meta Pseudo Labels (Pham, Dai, Xie, Luong & Le, 2021): the teacher learns from how much its
pseudo-labels help the student.

One step (paper, Alg. 1, with the first-order feedback of App. A.1 used by the official code):
1. teacher T labels a strong view of unlabeled x_u: y_hat = argmax T(strong(x_u)) (hard);
2. student S takes a step on CE(y_hat, S(strong(x_u))); here the step is a look-ahead
   theta' = theta - eta grad (computed with autograd.grad; the loop's optimizer makes the real
   student update from the same loss);
3. feedback h = CE_l(S_theta) - CE_l(S_theta') on a labeled batch: > 0 when y_hat helped;
4. teacher loss = h * CE(y_hat, T(strong(x_u))) + UDA consistency on x_u + CE on the labels.
After training, the student is fine-tuned on the labeled data alone (``finetune_steps`` in the
driver). The returned loss is teacher loss + student loss; their gradients touch disjoint
parameters (y_hat and h are detached), so one optimizer step updates both networks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..losses.semisup import linear_rampup, mpl_feedback, uda_loss
from ..methods import METHODS
from ..methods.base import StepOutput
from .base import Classifier, SemiSupervisedMethod, make_augment


def _reinit(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


@dataclass
class MPLConfig:
    num_classes: int = 10
    uratio: float = 7.0
    ema_decay: float = 0.995       # the student's EMA (official CIFAR-10 recipe)
    dropout: float = 0.2           # dense dropout on both networks
    label_smoothing: float = 0.15
    lookahead_lr: float = 0.05     # eta of the student's look-ahead step (student lr 0.05)
    uda_weight: float = 8.0
    uda_temperature: float = 0.7
    uda_threshold: float = 0.6
    uda_rampup: float = 0.0167     # fraction of training (official: 5k of 300k steps)
    student_wait: float = 0.01     # fraction of training before the student learns (3k of 300k)
    ra_ops: int = 2
    cutout: float = 0.5


@METHODS.register("mpl")
class MetaPseudoLabels(SemiSupervisedMethod):
    Config = MPLConfig

    def __init__(self, backbone: nn.Module, cfg: MPLConfig | None = None, view_cfg=None):
        super().__init__()
        self.cfg = cfg = cfg or MPLConfig()
        self.model = Classifier(backbone, cfg.num_classes, cfg.dropout)              # student
        self.teacher = Classifier(_reinit(copy.deepcopy(backbone)), cfg.num_classes,
                                  cfg.dropout)
        self.augment = make_augment(view_cfg, cfg.ra_ops, cfg.cutout)
        self.init_ema()

    def views(self, images, batch):
        return self.weak_and_strong(images, batch)

    def training_step(self, views, progress, batch=None) -> StepOutput:
        c = self.cfg
        n_l, y = self.split(batch)
        weak, x_us = views
        x_l, x_uw = weak[:n_l], weak[n_l:]
        n_u = x_us.shape[0]
        # teacher: labeled, weak and strong unlabeled in one pass
        t_logits = self.teacher(torch.cat([x_l, x_uw, x_us]))
        t_l, t_uw, t_us = t_logits[:n_l], t_logits[n_l:n_l + n_u], t_logits[n_l + n_u:]
        t_sup = F.cross_entropy(t_l, y, label_smoothing=c.label_smoothing)
        t_uda, mask = uda_loss(t_uw, t_us, c.uda_temperature, c.uda_threshold)
        y_hat = t_us.detach().argmax(1)
        # student on labeled + strong unlabeled
        s_logits = self.model(torch.cat([x_l, x_us]))
        s_l, s_us = s_logits[:n_l], s_logits[n_l:]
        s_loss = F.cross_entropy(s_us, y_hat, label_smoothing=c.label_smoothing)
        loss_l_old = F.cross_entropy(s_l.detach(), y)
        # look-ahead student theta' = theta - eta * grad CE(y_hat, S(x_us)); labeled loss there
        params = {k: v for k, v in self.model.named_parameters()}
        grads = torch.autograd.grad(s_loss, list(params.values()), retain_graph=True,
                                    allow_unused=True)
        with torch.no_grad():
            new = {k: (p - c.lookahead_lr * g if g is not None else p)
                   for (k, p), g in zip(params.items(), grads)}
            buffers = {k: v.clone() for k, v in self.model.named_buffers()}  # BN stats untouched
            loss_l_new = F.cross_entropy(functional_call(self.model, (new, buffers), (x_l,)), y)
        h = mpl_feedback(loss_l_old, loss_l_new)
        t_mpl = h * F.cross_entropy(t_us, y_hat)
        t_loss = t_sup + c.uda_weight * linear_rampup(progress, c.uda_rampup) * t_uda + t_mpl
        s_weight = 0.0 if progress < c.student_wait else 1.0
        loss = t_loss + s_weight * s_loss
        return StepOutput(loss, {"loss": loss.item(), "t_sup": t_sup.item(),
                                 "t_uda": t_uda.item(), "t_mpl": t_mpl.item(),
                                 "s_loss": s_loss.item(), "h": h.item(),
                                 "mask": mask.mean().item()})
