"""FreeMatch (Wang et al., 2023): FixMatch with a self-adaptive threshold and a fairness loss.

The threshold follows the model's confidence instead of being fixed: a global level tau_t (EMA of
the batch's mean max confidence, starting at 1/C) scaled per class by the EMA of the mean
predicted distribution, normalised to its maximum: tau_t(c) = p~_t(c) / max p~_t * tau_t.
Early on tau_t is low, so unlabeled images count from the first steps; it rises as the model
grows confident. The self-adaptive fairness loss (weight ``lambda_f``) pushes the mean prediction
on the confidently pseudo-labelled strong views towards the (histogram-normalised) class
distribution, so no class is starved.

Algorithm (paper, Alg. 1; USB ``freematch``): each step updates the EMAs with the weak views'
softmax, then masks with the updated thresholds. Here the updated state is computed functionally
inside the step and stored after the optimizer step (computing the loss changes no state); the
three EMAs are buffers, checkpointed and restored bit for bit on resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses._precision import at_least_float32
from ..losses.semisup import (class_threshold_loss, freematch_ema, freematch_fairness_loss,
                              freematch_thresholds)
from ..methods import METHODS
from .fixmatch import FixMatch, FixMatchConfig


@dataclass
class FreeMatchConfig(FixMatchConfig):
    ema_p: float = 0.999        # momentum of tau_t, p~_t and the label histogram (paper 0.999)
    lambda_f: float = 0.001     # fairness loss weight (USB's CIFAR-10 setting; paper w_f)


@METHODS.register("freematch")
class FreeMatch(FixMatch):
    Config = FreeMatchConfig

    def __init__(self, backbone, cfg: FreeMatchConfig | None = None, view_cfg=None):
        super().__init__(backbone, cfg or FreeMatchConfig(), view_cfg)
        c = self.cfg.num_classes
        self.register_buffer("time_p", torch.tensor(1.0 / c))
        self.register_buffer("p_model", torch.full((c,), 1.0 / c))
        self.register_buffer("label_hist", torch.full((c,), 1.0 / c))
        self._pending = None

    def unlabeled_loss(self, logits_w, logits_s, batch, n_l):
        # the state stays float32 under bf16 autocast (cast to bfloat16, tau stalled at 0.25)
        probs = at_least_float32(logits_w.detach()).softmax(1)
        time_p, p_model, hist = freematch_ema(self.time_p, self.p_model, self.label_hist, probs,
                                              self.cfg.ema_p)
        self._pending = (time_p, p_model, hist)
        thr = freematch_thresholds(time_p, p_model)
        loss_u, mask = class_threshold_loss(logits_w, logits_s, thr)
        fair = freematch_fairness_loss(logits_s, mask, p_model, hist)
        return loss_u, mask, {"_extra_loss": self.cfg.lambda_f * fair, "loss_f": fair.item(),
                              "tau": float(time_p), "thr_min": float(thr.min())}

    def after_optimizer_step(self, progress: float) -> None:
        super().after_optimizer_step(progress)
        if self._pending is not None:
            for buf, new in zip((self.time_p, self.p_model, self.label_hist), self._pending):
                buf.copy_(new.to(buf.dtype))
            self._pending = None
