"""Labels only: cross-entropy on the weakly augmented labeled images, nothing from unlabeled ones.

The baseline every semi-supervised table starts from ("supervised" in USB/TorchSSL). Started from
a self-supervised encoder (``--init RUN_DIR``) it is the "SSL + fine-tune on labels" baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from ..methods import METHODS
from ..methods.base import StepOutput
from .base import Classifier, SemiSupervisedMethod, make_augment


@dataclass
class SupervisedConfig:
    num_classes: int = 10
    uratio: float = 0.0          # no unlabeled stream
    ema_decay: float = 0.999
    dropout: float = 0.0
    label_smoothing: float = 0.0


@METHODS.register("supervised")
class Supervised(SemiSupervisedMethod):
    Config = SupervisedConfig

    def __init__(self, backbone: nn.Module, cfg: SupervisedConfig | None = None, view_cfg=None):
        super().__init__()
        self.cfg = cfg = cfg or SupervisedConfig()
        self.model = Classifier(backbone, cfg.num_classes, cfg.dropout)
        self.augment = make_augment(view_cfg)
        self.init_ema()

    def views(self, images, batch):
        return [self.augment.weak(images)]

    def training_step(self, views, progress, batch=None) -> StepOutput:
        n_l, y = self.split(batch)
        logits = self.model(views[0][:n_l])
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        acc = (logits.argmax(1) == y).float().mean().item()
        return StepOutput(loss, {"loss": loss.item(), "train_acc": acc})
