"""SLA: Self-supervised Label Augmentation via Input Transformations (Lee, Hwang & Shin, ICML 2020).

Defining idea: instead of asking the network to be invariant to a transformation that changes
the image's statistics (rotation, colour permutation), learn one classifier over the *joint*
label space (class, transformation): a rotated cat is its own class. The self-supervised label
enlarges the label space rather than competing with it.

Algorithm (paper, Sec. 2; hankook/SLA ``trainers.py``), per labeled batch (x, y):
    x_all = [t_0(x), ..., t_{M-1}(x)]               # every transformation, same batch
    L     = CE(joint(f(x_all)), y*M + k)            # N*M-way head
    SLA+SI: predict with joint(f(x))[:, 0::M]       # untransformed input, k = 0 block
    SLA+AG: predict with mean_k joint(f(t_k(x)))[:, k::M]
    SLA+SD: + a cheap N-way head s: CE(s(f(x)), y) + T^2 KL(AG.detach()/T || s/T); test with s.
Baselines in the same code path (``mode``): ``baseline`` (N-way CE on x), ``da`` (every t_k(x)
keeps label y: the transformation as label-preserving augmentation), ``mt`` (multi-task: N-way
head on every copy + M-way transformation head).
Semi-supervised use (``uratio > 0``, ``unlabeled_weight > 0``): unlabeled images add the
self-supervised part alone, CE of the transformation against the joint head's marginal over
classes (log sum_y exp joint[y*M + k]), or against the M-way head in ``mt``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment.views import IMAGENET_MEAN, IMAGENET_STD
from ..losses.sla import (aggregated_logits, sla_loss, sla_sd_loss, single_logits,
                          transformation_logits)
from ..methods import METHODS
from ..methods.base import StepOutput
from .base import SemiSupervisedMethod, make_augment

MODES = ("sla", "sla_sd", "baseline", "da", "mt")
INFERENCE = ("auto", "aggregated", "joint_single", "head")
_PERMS = list(itertools.permutations(range(3)))          # (0, 1, 2) = identity first
TRANSFORMS = {"rotation": 4, "rotation2": 2, "color_perm": 6, "rot_color_perm": 24}


def apply_transform(x: torch.Tensor, k: int, kind: str, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD) -> torch.Tensor:
    """t_k(x) for normalised images [B, 3, H, W]: rotations by k*90 degrees with rot90 (no
    interpolation); colour permutations applied to the un-normalised RGB channels."""
    if kind not in TRANSFORMS:
        raise ValueError(f"unknown SLA transform '{kind}'; choose one of: {', '.join(TRANSFORMS)}")
    rot, perm = {"rotation": (k, 0), "rotation2": (2 * k, 0), "color_perm": (0, k),
                 "rot_color_perm": (k // 6, k % 6)}[kind]
    if perm:
        m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        p = list(_PERMS[perm])
        x = ((x * s + m)[:, p] - m) / s
    if rot:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"SLA rotations need square images, got {tuple(x.shape[-2:])}")
        x = torch.rot90(x, rot, dims=(2, 3))
    return x


def all_transforms(x: torch.Tensor, kind: str, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """[M*B, ...], transformation-major: t_0(x) first."""
    return torch.cat([apply_transform(x, k, kind, mean, std) for k in range(TRANSFORMS[kind])])


class SLAClassifier(nn.Module):
    """backbone + heads; ``forward`` gives N-way logits with the configured inference:
    ``aggregated`` / ``joint_single`` (joint head) or ``head`` (the N-way head of baseline, da,
    mt and SLA+SD). The N-way head is named ``fc`` as in ``Classifier``."""

    def __init__(self, backbone: nn.Module, num_classes: int, mode: str = "sla",
                 transform: str = "rotation", inference: str = "auto", dropout: float = 0.0,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown SLA mode '{mode}'; choose one of: {', '.join(MODES)}")
        if inference not in INFERENCE:
            raise ValueError(f"unknown SLA inference '{inference}'; choose one of: "
                             f"{', '.join(INFERENCE)}")
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown SLA transform '{transform}'; choose one of: "
                             f"{', '.join(TRANSFORMS)}")
        self.mode, self.transform, self.num_classes = mode, transform, num_classes
        self.m = TRANSFORMS[transform]
        self.mean, self.std = tuple(mean), tuple(std)
        if inference == "auto":
            inference = "aggregated" if mode == "sla" else "head"
        has_joint = mode in ("sla", "sla_sd")
        if inference != "head" and not has_joint:
            raise ValueError(f"inference '{inference}' needs the joint head (mode sla or sla_sd)")
        if inference == "head" and mode == "sla":
            raise ValueError("mode 'sla' has no N-way head: use inference aggregated or "
                             "joint_single (or mode sla_sd)")
        self.inference = inference
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        d = backbone.embed_dim
        self.joint = nn.Linear(d, num_classes * self.m) if has_joint else None
        self.fc = nn.Linear(d, num_classes) if mode != "sla" else None
        self.aux = nn.Linear(d, self.m) if mode == "mt" else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inference == "head":
            return self.fc(self.features(x))
        if self.inference == "joint_single":
            return single_logits(self.joint(self.features(x)), self.m)
        xa = all_transforms(x, self.transform, self.mean, self.std)
        return aggregated_logits(self.joint(self.features(xa)), self.m)

    def export_metadata(self) -> dict[str, str]:
        return {"sla_mode": self.mode, "sla_transform": self.transform,
                "sla_inference": self.inference}


@dataclass
class SLAConfig:
    num_classes: int = 10
    mode: str = "sla"              # sla | sla_sd | baseline | da | mt
    transform: str = "rotation"    # rotation (M=4) | rotation2 | color_perm (6) | rot_color_perm (24)
    inference: str = "auto"        # auto (sla: aggregated, others: head) | aggregated | joint_single | head
    temperature: float = 1.0       # SLA+SD distillation temperature (official --T 1)
    uratio: float = 0.0            # > 0 with unlabeled_weight > 0: semi-supervised SLA
    unlabeled_weight: float = 0.0  # weight of the transformation loss on unlabeled images
    ema_decay: float = 0.999       # evaluated through an EMA copy like every classifier here
    dropout: float = 0.0


@METHODS.register("sla")
class SLA(SemiSupervisedMethod):
    Config = SLAConfig

    def __init__(self, backbone: nn.Module, cfg: SLAConfig | None = None, view_cfg=None):
        super().__init__()
        self.cfg = cfg = cfg or SLAConfig()
        self.augment = make_augment(view_cfg)   # crop (pad + translate) and flip, as the paper
        self.model = SLAClassifier(backbone, cfg.num_classes, cfg.mode, cfg.transform,
                                   cfg.inference, cfg.dropout, self.augment.mean, self.augment.std)
        if cfg.unlabeled_weight > 0 and cfg.mode not in ("sla", "sla_sd", "mt"):
            raise ValueError(f"method.unlabeled_weight needs a transformation head (mode sla, "
                             f"sla_sd or mt), not '{cfg.mode}'")
        self.init_ema()

    @property
    def uratio(self) -> float:
        return self.cfg.uratio if self.cfg.unlabeled_weight > 0 else 0.0

    def views(self, images, batch):
        return [self.augment.weak(images)]

    def training_step(self, views, progress, batch=None) -> StepOutput:
        c, net, m = self.cfg, self.model, self.model.m
        n_l, y = self.split(batch)
        x = views[0]
        use_u = c.unlabeled_weight > 0 and x.shape[0] > n_l
        logs: dict[str, float] = {}
        if c.mode == "baseline":
            logits = net.fc(net.features(x[:n_l]))
            loss = F.cross_entropy(logits, y)
            logs["train_acc"] = (logits.argmax(1) == y).float().mean().item()
            return StepOutput(loss, {"loss": loss.item(), **logs})
        xa = all_transforms(x[:n_l], c.transform, net.mean, net.std)
        if use_u:
            xa = torch.cat([xa, all_transforms(x[n_l:], c.transform, net.mean, net.std)])
        h = net.features(xa)
        h_l, h_u = h[:m * n_l], h[m * n_l:]
        if c.mode == "da":
            loss = F.cross_entropy(net.fc(h_l), y.repeat(m))
        elif c.mode == "mt":
            k = torch.arange(m, device=y.device).repeat_interleave(n_l)
            l_cls, l_aux = F.cross_entropy(net.fc(h_l), y.repeat(m)), F.cross_entropy(net.aux(h_l), k)
            loss = l_cls + l_aux
            logs.update(loss_class=l_cls.item(), loss_transform=l_aux.item())
        elif c.mode == "sla":
            joint = net.joint(h_l)
            loss = sla_loss(joint, y, m)
            logs["train_acc"] = (aggregated_logits(joint, m).argmax(1) == y).float().mean().item()
        else:  # sla_sd
            joint = net.joint(h_l)
            loss, parts = sla_sd_loss(joint, net.fc(h_l[:n_l]), y, m, c.temperature)
            logs.update({f"loss_{k}": v.item() for k, v in parts.items()})
        if use_u:
            n_u = h_u.shape[0] // m
            k = torch.arange(m, device=y.device).repeat_interleave(n_u)
            t_logits = net.aux(h_u) if c.mode == "mt" else transformation_logits(net.joint(h_u), m)
            l_u = F.cross_entropy(t_logits, k)
            loss = loss + c.unlabeled_weight * l_u
            logs["loss_unlabeled"] = l_u.item()
        return StepOutput(loss, {"loss": loss.item(), **logs})
