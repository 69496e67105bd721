"""What every semi-supervised method shares: a classifier on the backbone and an EMA copy of both
for evaluation. Training logic stays in each method's file; this is composition, not a loop.

The loop gives a semi-supervised method (``semi_supervised = True``) one batch that is the
concatenation of a labeled stream (``batch_size`` images, labels in ``batch.label``) and an
unlabeled stream (``uratio * batch_size`` images, label -1), and calls ``views(images, batch)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..augment.randaugment import SemiAugConfig, WeakStrong
from ..methods.base import Method
from ..nn.ema import ema_update, frozen_copy


class Classifier(nn.Module):
    """backbone -> dropout -> linear. ``forward`` gives logits [B, num_classes].

    ``flip_tta`` (off unless a saved model says so, ``eval.flip_tta``): in eval mode the logits
    are the mean of the image's and its mirror image's (test-time augmentation for a model
    trained with random horizontal flips). Training-mode calls never average, so a teacher
    used in eval mode for pseudo-labels is unchanged unless it is asked for."""

    flip_tta = False

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(backbone.embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_tta and not self.training:
            # two passes, not one over the concatenation: torch.export would fix the batch size
            return (self.fc(self.backbone(x)) + self.fc(self.backbone(x.flip(-1)))) / 2
        return self.fc(self.dropout(self.backbone(x)))


def pseudo_label_accuracy(targets: torch.Tensor, mask: torch.Tensor | None, batch, n_l: int,
                          prefix: str = "pl") -> dict[str, float]:
    """Diagnostics: the accuracy of the pseudo-labels ``targets`` (one per unlabeled image of the
    batch) against the true labels the loop passes in ``batch.hidden`` (never used for training),
    over every unlabeled image (``pl_acc``) and over those the mask keeps (``pl_acc_masked``).
    Empty when the true labels are unknown."""
    hidden = getattr(batch, "hidden", None)
    if hidden is None:
        return {}
    truth = hidden[n_l:n_l + len(targets)]
    known = truth >= 0
    if not bool(known.any()):
        return {}
    right = (targets.detach() == truth) & known
    out = {f"{prefix}_acc": float(right.sum()) / float(known.sum())}
    if mask is not None:
        kept = mask.bool() & known
        if bool(kept.any()):
            out[f"{prefix}_acc_masked"] = float((right & kept).sum()) / float(kept.sum())
    return out


def make_augment(view_cfg=None, ra_ops: int = 2, cutout: float = 0.5) -> WeakStrong:
    """Weak/strong views; the flip probability comes from the run's ``augment`` section (set
    ``augment.flip_p=0`` for data where a mirror image is another class, e.g. digits)."""
    flip = view_cfg.flip_p if view_cfg is not None else 0.5
    return WeakStrong(SemiAugConfig(flip_p=flip, ra_ops=ra_ops, cutout=cutout))


class SemiSupervisedMethod(Method):
    """Base for methods that train a classifier from labels + unlabeled images.

    Subclasses set ``self.model`` (a Classifier) in ``__init__`` and call ``init_ema``; the config
    must have ``num_classes``, ``uratio`` and ``ema_decay``."""

    semi_supervised = True

    @property
    def uratio(self) -> float:
        return self.cfg.uratio

    def unlabeled_pool(self, labels) -> "torch.Tensor":
        """Indices the unlabeled stream draws from: every training image (labeled ones too, as
        FixMatch/USB do: ``include_lb_to_ulb``)."""
        import numpy as np

        return np.arange(len(labels))

    def init_ema(self) -> None:
        self.ema = frozen_copy(self.model) if self.cfg.ema_decay > 0 else None
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    def ema_decay(self) -> float:
        """The configured decay, warmed up as tf.train.ExponentialMovingAverage(num_updates)
        does: min(decay, (1 + t) / (10 + t)). Without it a 0.999 average of a short run is
        mostly its random initialisation."""
        t = int(self.ema_updates)
        return min(self.cfg.ema_decay, (1 + t) / (10 + t))

    def after_optimizer_step(self, progress: float) -> None:
        if self.ema is not None:
            ema_update(self.ema, self.model, self.ema_decay(),
                       average_buffers=bool(getattr(self.cfg, "ema_teacher", False)))
            self.ema_updates += 1

    def weak_and_strong(self, images, batch) -> list[torch.Tensor]:
        """[weak view of every image, strong view of the unlabeled ones] (FixMatch, MPL)."""
        n_l = int((batch.label >= 0).sum())
        return [self.augment.weak(images), self.augment.strong(images[n_l:])]

    def split(self, batch) -> tuple[int, torch.Tensor]:
        """(number of labeled images at the front of the batch, their labels)."""
        n_l = int((batch.label >= 0).sum())
        return n_l, batch.label[:n_l]

    @property
    def eval_model(self) -> nn.Module:
        """The network evaluation and export use: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        m = self.eval_model
        was = m.training
        m.eval()
        out = m(x)
        m.train(was)
        return out

    @property
    def encoder(self) -> nn.Module:
        return self.eval_model.backbone
