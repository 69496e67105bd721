"""FlexMatch (Zhang et al., 2021): FixMatch with Curriculum Pseudo Labelling.

Each class c gets its own threshold T_t(c) = M(beta_t(c)) tau from how many unlabeled images
the model currently predicts as c with confidence above tau (its "learning effect" sigma_t(c));
beta normalises sigma by the largest class (or, during the threshold warm-up, by the number of
images with no confident prediction yet), M(x) = x / (2 - x). Hard-to-learn classes and the
start of training get low thresholds, so unlabeled images contribute from the first steps.

Algorithm (paper, Alg. 1; TorchSSL/USB ``flexmatch``): a per-image memory ``selected`` (-1 at
first) of the last confident (>= tau) prediction of every image of the unlabeled pool; each step
uses the thresholds of the memory as it stands, then writes this batch's confident predictions
into it (after the optimizer step, so computing the loss changes no state). The memory is a
buffer: it is checkpointed and survives kill and resume bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses.semisup import class_threshold_loss, flexmatch_thresholds
from ..methods import METHODS
from .fixmatch import FixMatch, FixMatchConfig


@dataclass
class FlexMatchConfig(FixMatchConfig):
    threshold_warmup: bool = True    # count the not-yet-confident images in beta's denominator


@METHODS.register("flexmatch")
class FlexMatch(FixMatch):
    Config = FlexMatchConfig

    def __init__(self, backbone, cfg: FlexMatchConfig | None = None, view_cfg=None):
        super().__init__(backbone, cfg or FlexMatchConfig(), view_cfg)
        self.register_buffer("selected", torch.full((0,), -1, dtype=torch.long))
        self._pending = None

    def setup(self, num_samples: int) -> None:
        """One memory slot per image of the unlabeled pool (every training image)."""
        self.selected = torch.full((num_samples,), -1, dtype=torch.long,
                                   device=self.selected.device)

    def thresholds(self) -> torch.Tensor:
        return flexmatch_thresholds(self.selected, self.cfg.num_classes, self.cfg.threshold,
                                    self.cfg.threshold_warmup)

    def unlabeled_loss(self, logits_w, logits_s, batch, n_l):
        thr = self.thresholds().to(logits_w.device)
        loss_u, mask = class_threshold_loss(logits_w, logits_s, thr)
        with torch.no_grad():
            conf, target = logits_w.detach().softmax(1).max(1)
            over = conf >= self.cfg.threshold
            if batch is not None and len(self.selected):
                idx = batch.index[n_l:n_l + len(target)]
                self._pending = (idx[over], target[over])
        return loss_u, mask, {"thr_mean": float(thr.mean()), "thr_min": float(thr.min()),
                              "memory_used": float((self.selected >= 0).float().mean())
                              if len(self.selected) else 0.0}

    def after_optimizer_step(self, progress: float) -> None:
        super().after_optimizer_step(progress)
        if self._pending is not None:
            idx, target = self._pending
            self.selected[idx.to(self.selected.device)] = target.to(self.selected.device)
            self._pending = None
