"""FixMatch (Sohn et al., 2020): consistency between a weak and a strong view, through pseudo-labels.

Algorithm (paper, Alg. 1): for each unlabeled image u, q = softmax(f(weak(u))) (no gradient);
if max q >= tau, argmax q is a hard label for f(strong(u)), strong = RandAugment + Cutout.
Loss = CE(labeled, weak) + lambda_u * (1/(mu B)) sum 1[max q >= tau] CE(argmax q, f(strong(u))).
Recipe (reference A.0): tau 0.95, lambda_u 1, mu 7, B 64, SGD Nesterov lr 0.03, wd 5e-4 on
weights only, lr cos(7 pi k / 16 K), EMA 0.999 for evaluation, WRN-28-2. Labeled, weak and strong
batches go through the network together so BatchNorm sees all of them (``use_cat``).

``ema_teacher=true`` (EMAN, Cai et al., CVPR 2021, their FixMatch): the EMA model, in evaluation
mode and with its BatchNorm statistics averaged like its weights, labels the weak views; only the
labeled and strong views go through the trained network, so a step skips the backward pass over
the weak views (0.69x the step time on fit's CIFAR-10 recipe). At equal steps it trails the paper's
form (the EMA lags the model early on); at equal time it is level or ahead (BENCHMARKS.md 6).

``dist_align=true`` (ReMixMatch's distribution alignment, Berthelot et al., 2020, Sec. 3.2; USB's
``DistAlignEMAHook``): before thresholding, the weak views' softmax q becomes
Normalize(q * p(y) / p~(y)), p~ the running mean of q, p(y) the running label histogram of the
labeled batches, both with momentum ``da_momentum`` (0.99: about ReMixMatch's 128-batch window)
and started from the first batch. It keeps the pseudo-labels' class mix near the labeled one.

FlexMatch and FreeMatch (``flexmatch.py``, ``freematch.py``) share this step and replace only
``unlabeled_loss``: how the threshold is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..losses._precision import at_least_float32
from ..losses.semisup import class_distribution_ema, distribution_alignment, fixmatch_loss
from ..methods import METHODS
from ..methods.base import StepOutput
from .base import Classifier, SemiSupervisedMethod, make_augment, pseudo_label_accuracy


@dataclass
class FixMatchConfig:
    num_classes: int = 10
    threshold: float = 0.95
    lambda_u: float = 1.0
    uratio: float = 7.0
    ema_decay: float = 0.999
    ra_ops: int = 2            # RandAugment operations per image
    cutout: float = 0.5        # max Cutout side / image side
    ema_teacher: bool = False  # the EMA model labels the weak views (EMAN); false: the paper
    dist_align: bool = False   # ReMixMatch's distribution alignment of the weak views' softmax
    da_momentum: float = 0.99  # of its two running class distributions


@METHODS.register("fixmatch")
class FixMatch(SemiSupervisedMethod):
    Config = FixMatchConfig

    def __init__(self, backbone: nn.Module, cfg: FixMatchConfig | None = None, view_cfg=None):
        super().__init__()
        self.cfg = cfg = cfg or FixMatchConfig()
        self.model = Classifier(backbone, cfg.num_classes)
        self.augment = make_augment(view_cfg, cfg.ra_ops, cfg.cutout)
        self.init_ema()
        if cfg.dist_align:
            # zeros: no batch seen yet (the first batch starts them); checkpointed as buffers
            self.register_buffer("da_p_model", torch.zeros(cfg.num_classes))
            self.register_buffer("da_p_target", torch.zeros(cfg.num_classes))
        self._da_pending = None

    def views(self, images, batch):
        return self.weak_and_strong(images, batch)

    def training_step(self, views, progress, batch=None) -> StepOutput:
        n_l, y = self.split(batch)
        weak, strong = views
        n_u = strong.shape[0]
        if self.cfg.ema_teacher and self.ema is not None:
            logits = self.model(torch.cat([weak[:n_l], strong]))   # [n_l + n_u, C]
            logits_l, logits_s = logits[:n_l], logits[n_l:]
            logits_w = self.predict_logits(weak[n_l:])               # EMA model, eval mode
        else:
            logits = self.model(torch.cat([weak, strong]))   # [n_l + 2 n_u, C]
            logits_l = logits[:n_l]
            logits_w, logits_s = logits[n_l:n_l + n_u], logits[n_l + n_u:]
        loss_l = F.cross_entropy(logits_l, y)
        da_logs = {}
        if self.cfg.dist_align:
            logits_w, da_logs = self.align(logits_w, y)
        loss_u, mask, logs = self.unlabeled_loss(logits_w, logits_s, batch, n_l)
        loss = loss_l + self.cfg.lambda_u * loss_u + logs.pop("_extra_loss", 0.0)
        logs = {"loss": loss.item(), "loss_l": loss_l.item(), "loss_u": loss_u.item(),
                "mask": mask.mean().item(), **da_logs, **logs}
        logs.update(pseudo_label_accuracy(logits_w.detach().argmax(1), mask, batch, n_l))
        return StepOutput(loss, logs)

    def align(self, logits_w, y) -> tuple[torch.Tensor, dict]:
        """Distribution alignment of the weak views: the log of the aligned softmax (so that a
        softmax of it gives q~ exactly) and the running state's spread in the logs. The updated
        running distributions are stored after the optimizer step (computing the loss changes
        no state)."""
        probs = at_least_float32(logits_w.detach()).softmax(1)
        c = probs.shape[1]
        p_model = class_distribution_ema(self.da_p_model, probs.mean(0), self.cfg.da_momentum)
        p_target = class_distribution_ema(
            self.da_p_target, torch.bincount(y, minlength=c).to(probs.dtype) / max(1, len(y)),
            self.cfg.da_momentum)
        self._da_pending = (p_model, p_target)
        aligned = distribution_alignment(probs, p_model, p_target)
        ratio = p_target / p_model.clamp_min(1e-6)
        return aligned.clamp_min(1e-30).log(), {"da_ratio_min": float(ratio.min()),
                                                "da_ratio_max": float(ratio.max())}

    def after_optimizer_step(self, progress: float) -> None:
        super().after_optimizer_step(progress)
        if self._da_pending is not None:
            for buf, new in zip((self.da_p_model, self.da_p_target), self._da_pending):
                buf.copy_(new.to(buf.dtype))
            self._da_pending = None

    def unlabeled_loss(self, logits_w, logits_s, batch, n_l):
        """(loss, mask, logs) of the unlabeled batch: FixMatch's fixed threshold."""
        loss_u, mask = fixmatch_loss(logits_w, logits_s, self.cfg.threshold)
        return loss_u, mask, {}
