"""Meta Pseudo Labels (Pham, Dai, Xie, Luong & Le, 2021): the teacher learns from how much its
pseudo-labels help the student.

One step (paper, Alg. 1, with the first-order feedback of App. A.1 that the official code uses):
1. the teacher T labels the weak view of unlabeled x_u: y_hat = argmax T(weak(x_u)) (hard);
2. the student S takes a step on CE(y_hat, S(strong(x_u))); here a look-ahead
   theta' = theta - eta grad (autograd.grad; the loop's optimizer makes the real student update
   from the same loss);
3. feedback h = CE_l(S_theta) - CE_l(S_theta') on the labeled batch (> 0 when y_hat helped), both
   terms computed by the *same* function (labeled images only, BatchNorm on their batch
   statistics, no dropout), so a zero-size step gives h = 0 exactly; minus the official moving
   average of h (rate 0.01) as a baseline;
4. teacher loss = h * CE(y_hat, T(weak(x_u))) (REINFORCE on the prediction that produced y_hat)
   + UDA consistency on x_u + CE on the labels.
The returned loss is teacher loss + student loss; their gradients touch disjoint parameters (y_hat
and h are detached), so one optimizer step updates both networks.

Where this departs from google-research/meta_pseudo_labels, and why:
- the student learns from the teacher's hard label on the *weak* view (kekmodel/MPL-pytorch), not
  from the teacher's softmax on the strong view (official): at the start of a short run the
  strong-view predictions are right for 14-21% of CIFAR-10 images, the weak-view ones far more;
- the official "old" labeled loss comes from the joint pass on (strong unlabeled + labeled, with
  dropout) and the "new" one from a labeled-only pass with fresh dropout, so h carries a term that
  has nothing to do with the pseudo-labels (measured: -0.02 to -0.30 on average for a zero step);
- the UDA ramp and the student's wait are in steps (``uda_steps``, ``student_wait_steps``) sized
  for runs of a few thousand steps, not fractions of the 300k-step recipe (5k and 3k there).
After training, the student is fine-tuned on the labeled data alone (``finetune_steps`` in the
driver).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..losses.semisup import moving_baseline, mpl_feedback, uda_loss
from ..methods import METHODS
from ..methods.base import StepOutput
from .base import Classifier, SemiSupervisedMethod, make_augment, pseudo_label_accuracy


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
    uda_steps: int = 300           # linear UDA ramp (official: 5k of 300k steps)
    student_wait_steps: int = 100  # the student learns after this many steps (official 3k)
    baseline_rate: float = 0.01    # moving average of h subtracted from it (official 0.01)
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
        # the feedback's moving-average baseline and the step count (both checkpointed)
        self.register_buffer("h_baseline", torch.zeros(()))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self._pending_baseline: torch.Tensor | None = None

    def views(self, images, batch):
        return self.weak_and_strong(images, batch)

    def labeled_loss(self, params: dict, x_l: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """CE of the student with weights ``params`` on the labeled batch: BatchNorm on this
        batch's statistics (running statistics untouched), dropout off; the one function both
        sides of the feedback go through."""
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}
        drop = self.model.dropout
        was = drop.training
        drop.eval()
        try:
            return F.cross_entropy(functional_call(self.model, (params, buffers), (x_l,)), y)
        finally:
            drop.train(was)

    def feedback(self, s_loss: torch.Tensor, x_l: torch.Tensor, y: torch.Tensor,
                 lookahead_lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h, labeled loss before, after) of a look-ahead SGD step of size ``lookahead_lr`` on
        the student's pseudo-label loss (App. A.1's first-order estimate)."""
        params = dict(self.model.named_parameters())
        grads = torch.autograd.grad(s_loss, list(params.values()), retain_graph=True,
                                    allow_unused=True)
        with torch.no_grad():
            new = {k: (p - lookahead_lr * g if g is not None else p)
                   for (k, p), g in zip(params.items(), grads)}
            old_l = self.labeled_loss(params, x_l, y)
            new_l = self.labeled_loss(new, x_l, y)
        return mpl_feedback(old_l, new_l), old_l, new_l

    def training_step(self, views, progress, batch=None) -> StepOutput:
        c = self.cfg
        n_l, y = self.split(batch)
        weak, x_us = views
        x_l, x_uw = weak[:n_l], weak[n_l:]
        n_u = x_us.shape[0]
        step = int(self.steps_done)
        # teacher: labeled, weak and strong unlabeled in one pass
        t_logits = self.teacher(torch.cat([x_l, x_uw, x_us]))
        t_l, t_uw, t_us = t_logits[:n_l], t_logits[n_l:n_l + n_u], t_logits[n_l + n_u:]
        t_sup = F.cross_entropy(t_l, y, label_smoothing=c.label_smoothing)
        t_uda, mask = uda_loss(t_uw, t_us, c.uda_temperature, c.uda_threshold)
        y_hat = t_uw.detach().argmax(1)
        # student on labeled + strong unlabeled (one pass: BatchNorm sees both, as officially)
        s_us = self.model(torch.cat([x_l, x_us]))[n_l:]
        s_loss = F.cross_entropy(s_us, y_hat, label_smoothing=c.label_smoothing)
        h_raw, old_l, new_l = self.feedback(s_loss, x_l, y, c.lookahead_lr)
        baseline = moving_baseline(self.h_baseline, h_raw, c.baseline_rate)
        self._pending_baseline = baseline.detach()     # committed after the optimizer step
        h = (h_raw - baseline).detach()
        t_mpl = h * F.cross_entropy(t_uw, y_hat)
        uda_w = c.uda_weight * min(1.0, step / max(1, c.uda_steps))
        t_loss = t_sup + uda_w * t_uda + t_mpl
        s_weight = 0.0 if step < c.student_wait_steps else 1.0
        loss = t_loss + s_weight * s_loss
        logs = {"loss": loss.item(), "t_sup": t_sup.item(), "t_uda": t_uda.item(),
                "t_mpl": t_mpl.item(), "s_loss": s_loss.item(), "h": h.item(),
                "h_raw": h_raw.item(), "s_loss_l": old_l.item(), "uda_weight": uda_w,
                "mask": mask.mean().item()}
        logs.update(pseudo_label_accuracy(y_hat, None, batch, n_l, prefix="pl"))
        return StepOutput(loss, logs)

    def after_optimizer_step(self, progress: float) -> None:
        super().after_optimizer_step(progress)
        if self._pending_baseline is not None:
            self.h_baseline.copy_(self._pending_baseline)
            self._pending_baseline = None
        self.steps_done += 1
