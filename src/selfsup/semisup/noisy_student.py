"""Noisy Student (Xie, Luong, Hovy & Le, 2020): self-training with an equal-or-larger, noised
student, iterated.

Round k (``selfsup.semisupervised.noisy_student`` runs the rounds):
1. the teacher, **without noise** (eval mode, un-augmented images), predicts every unlabeled image;
2. ``select_pseudo_labels`` keeps confident predictions and balances classes (duplicating images of
   rare classes, keeping the most confident of frequent ones; official ``filter_unlabel.py``);
3. this method trains a student on labeled + pseudo-labeled images **with noise**: RandAugment on
   the inputs, dropout before the classifier, stochastic depth where the backbone has it;
4. the student becomes the next teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..losses.semisup import soft_target_loss
from ..methods import METHODS
from ..methods.base import StepOutput
from .base import Classifier, SemiSupervisedMethod, make_augment


def select_pseudo_labels(probs: np.ndarray, threshold: float = 0.3, per_class: int | None = None,
                         soft: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Teacher probabilities [N, C] -> (indices [M], targets [M, C]) to train the student on.

    Keeps images whose confidence >= ``threshold``. With ``per_class`` every class gets exactly
    that many: the most confident ones if it has more, all of them repeated (randomly) if fewer.
    Targets are the probabilities (``soft``) or one-hot argmaxes."""
    conf, pred = probs.max(1), probs.argmax(1)
    keep = np.flatnonzero(conf >= threshold)
    rng = np.random.default_rng(seed)
    if per_class is not None:
        chosen = []
        for c in range(probs.shape[1]):
            idx = keep[pred[keep] == c]
            if len(idx) == 0:
                continue
            if len(idx) >= per_class:
                chosen.append(idx[np.argsort(-conf[idx], kind="stable")[:per_class]])
            else:
                extra = rng.choice(idx, per_class - len(idx), replace=True)
                chosen.append(np.concatenate([idx, extra]))
        keep = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    targets = probs[keep] if soft else np.eye(probs.shape[1], dtype=probs.dtype)[pred[keep]]
    return keep.astype(np.int64), targets.astype(np.float32)


@dataclass
class NoisyStudentConfig:
    num_classes: int = 10
    uratio: float = 3.0            # pseudo-labeled images per labeled image (paper: 1-3 at B0-B7)
    dropout: float = 0.5           # noise: dropout before the classifier (paper 0.5 on B7)
    drop_path: float = 0.2         # noise: stochastic depth (final-layer survival 0.8)
    ra_ops: int = 2                # noise: RandAugment on the inputs
    label_smoothing: float = 0.0
    ema_decay: float = 0.999
    # pseudo-labelling (used by the round driver)
    soft: bool = True
    threshold: float = 0.3
    per_class: int | None = None   # class balancing; None = no balancing


@METHODS.register("noisy_student")
class NoisyStudent(SemiSupervisedMethod):
    Config = NoisyStudentConfig

    def __init__(self, backbone: nn.Module, cfg: NoisyStudentConfig | None = None, view_cfg=None):
        super().__init__()
        self.cfg = cfg = cfg or NoisyStudentConfig()
        if hasattr(backbone, "set_drop_path"):
            backbone.set_drop_path(cfg.drop_path)
        self.model = Classifier(backbone, cfg.num_classes, cfg.dropout)
        self.augment = make_augment(view_cfg, cfg.ra_ops, 0.0)
        self.pool = np.zeros(0, np.int64)
        self.targets: torch.Tensor | None = None     # [N, C] teacher targets by dataset index
        self.init_ema()

    def set_pseudo_labels(self, num_samples: int, indices: np.ndarray, targets: np.ndarray) -> None:
        """The images (dataset indices, repeats allowed) and targets the student learns from."""
        full = torch.zeros(num_samples, self.cfg.num_classes)
        full[torch.from_numpy(indices)] = torch.from_numpy(targets)
        self.pool, self.targets = np.asarray(indices, np.int64), full

    def unlabeled_pool(self, labels):
        return self.pool

    def views(self, images, batch):
        return [self.augment.strong(images)]          # input noise on every image

    def training_step(self, views, progress, batch=None) -> StepOutput:
        n_l, y = self.split(batch)
        logits = self.model(views[0])
        loss_l = F.cross_entropy(logits[:n_l], y, label_smoothing=self.cfg.label_smoothing)
        if logits.shape[0] > n_l:
            if self.targets is None:
                raise ValueError("noisy_student trains on a teacher's pseudo-labels: run it with "
                                 "`selfsup semisup --rounds K` (or call set_pseudo_labels)")
            t = self.targets[batch.index[n_l:].cpu()].to(logits.device)
            loss_u = soft_target_loss(logits[n_l:], t)
        else:
            loss_u = logits.sum() * 0
        loss = loss_l + loss_u
        return StepOutput(loss, {"loss": loss.item(), "loss_l": loss_l.item(),
                                 "loss_u": loss_u.item()})
