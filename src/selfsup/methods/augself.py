"""AugSelf: Improving Transferability of Representations via Augmentation-Aware Self-Supervision
(Lee et al., NeurIPS 2021).

Defining idea: invariance to augmentations throws away what they change (colour, position), which
some downstream tasks need. AugSelf adds an auxiliary task to any two-view method: from the
*backbone* features of both views, predict the difference of the augmentation parameters that
made them, so the representation has to keep that information.

Algorithm (paper, Sec. 3; hankook/AugSelf ``SSObjective``), per minibatch, on top of a base
method M (SimCLR, SimSiam, MoCo v2, BYOL, ...):
    (x1, w1), (x2, w2) = t(x), t'(x)         # views and the parameters the augmentation sampled
    L_M                = M's own loss on (x1, x2)
    f1, f2             = f(x1), f(x2)        # the online backbone's features (shared with M's pass)
    for each augmentation a with weight lambda_a:
        d_a = w1_a - w2_a                    # crop: centre (x mirrored when flipped) and size;
                                             # colour: jitter factors / their ranges, 0 if not applied
        L_a = mse(tanh(phi_a([f1, f2])), d_a)  (and the symmetric order [f2, f1] -> -d_a)
    L = L_M + sum_a lambda_a L_a             # lambda = 1 for crop and colour (paper, STL-10)

Composition, not copying: ``AugSelf(base)`` wraps any method whose views are two ``ViewAugment``
views; the base's training step runs unchanged and the backbone features it computes are taken
with a forward hook (a base that feeds only one view to its online backbone, like MoCo v2, gets
the second view's features from one extra forward pass).
Enable with ``method.augself_crop=1.0 method.augself_color=1.0`` on such a method.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ViewAugment
from ..heads.mlp import projection_head
from .base import BatchInfo, Method, StepOutput

PREFIX = "augself_"


@dataclass
class AugSelfConfig:
    crop: float = 1.0        # lambda for the crop-difference task (paper: 1.0 on STL-10)
    color: float = 1.0       # lambda for the colour-jitter-difference task
    flip: float = 0.0        # lambda for "same or different flip" (BCE), optional in the paper
    hidden_dim: int = 512    # the predictors' hidden width (3-layer MLPs)
    symmetric: bool = True   # predict from [f1, f2] and from [f2, f1]


def split_augself(method_section: dict) -> tuple[dict, AugSelfConfig | None]:
    """The ``method`` section without its ``augself_*`` keys, and the AugSelf config they give
    (None when no task has a positive weight)."""
    from ..config import ConfigError, _build

    base = {k: v for k, v in method_section.items() if not k.startswith(PREFIX)}
    own = {k[len(PREFIX):]: v for k, v in method_section.items() if k.startswith(PREFIX)}
    if not own:
        return base, None
    valid = {f.name for f in fields(AugSelfConfig)}
    unknown = sorted(f"method.{PREFIX}{k}" for k in own if k not in valid)
    if unknown:
        raise ConfigError(f"unknown AugSelf key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(f'method.{PREFIX}{k}' for k in sorted(valid))}")
    cfg = _build(AugSelfConfig, own, f"method.{PREFIX}")
    if cfg.crop <= 0 and cfg.color <= 0 and cfg.flip <= 0:
        return base, None
    return base, cfg


# The packed parameter vector each view carries: crop (cx, cy, w, h), flip, colour factors
# (brightness, contrast, saturation, hue), colour applied.
PARAM_DIM = 10


def pack_params(params: dict[str, torch.Tensor], n: int, device) -> torch.Tensor:
    out = torch.zeros(n, PARAM_DIM, device=device)
    out[:, 0:4] = params["crop"] if "crop" in params else torch.tensor([0.5, 0.5, 1.0, 1.0])
    if "flip" in params:
        out[:, 4] = params["flip"]
    if "color" in params:
        out[:, 5:9] = params["color"]
        out[:, 9] = params["color_applied"]
    else:
        out[:, 5:8] = 1.0   # neutral factors
    return out


def crop_target(p: torch.Tensor) -> torch.Tensor:
    """[B, 4] crop description in the view's own frame: the x centre is mirrored when the view
    was flipped (the official ``extract_diff``), then (cx, cy, w, h)."""
    cx = torch.where(p[:, 4] > 0.5, 1.0 - p[:, 0], p[:, 0])
    return torch.stack([cx, p[:, 1], p[:, 2], p[:, 3]], 1)


def color_target(p: torch.Tensor, ranges: tuple[float, float, float, float]) -> torch.Tensor:
    """[B, 4] jitter factors normalised by their ranges to [-1, 1]: (factor - 1) / range for
    brightness, contrast, saturation, hue / range for hue; 0 (neutral) where jitter was not
    applied."""
    b, c, s, h = ranges
    f = torch.stack([(p[:, 5] - 1) / b if b > 0 else torch.zeros_like(p[:, 5]),
                     (p[:, 6] - 1) / c if c > 0 else torch.zeros_like(p[:, 6]),
                     (p[:, 7] - 1) / s if s > 0 else torch.zeros_like(p[:, 7]),
                     p[:, 8] / h if h > 0 else torch.zeros_like(p[:, 8])], 1)
    return f * p[:, 9:10]


def augself_targets(p1: torch.Tensor, p2: torch.Tensor, ranges) -> dict[str, torch.Tensor]:
    """The differences view 1 - view 2 that the predictors regress (flip: 1 if they differ)."""
    return {"crop": crop_target(p1) - crop_target(p2),
            "color": color_target(p1, ranges) - color_target(p2, ranges),
            "flip": (p1[:, 4] != p2[:, 4]).float().unsqueeze(1)}


def augself_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """MSE on tanh(prediction) for the regression targets, BCE with logits for flip."""
    if kind == "flip":
        return F.binary_cross_entropy_with_logits(pred, target)
    return F.mse_loss(torch.tanh(pred), target)


class AugSelf(Method):
    """``base`` plus AugSelf's auxiliary predictors; the encoder and the base loss are the base's."""

    Config = AugSelfConfig

    def __init__(self, base: Method, cfg: AugSelfConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or AugSelfConfig()
        augment = getattr(base, "augment", None)
        if not isinstance(augment, ViewAugment):
            raise ValueError(f"AugSelf needs a two-view method whose views come from ViewAugment "
                             f"(simclr, simsiam, mocov2, byol, barlow_twins, vicreg); "
                             f"{type(base).__name__} has none")
        vc = augment.cfg
        if cfg.crop > 0 and not vc.crop:
            raise ValueError("method.augself_crop > 0 needs augment.crop=true (no crop to predict)")
        if cfg.color > 0 and not vc.color:
            raise ValueError("method.augself_color > 0 needs augment.color=true")
        s = vc.jitter_strength
        self.ranges = (vc.brightness * s, vc.contrast * s, vc.saturation * s, vc.hue * s)
        self.base = base
        d = base.encoder.embed_dim
        dims = {"crop": 4, "color": 4, "flip": 1}
        self.tasks = [k for k in ("crop", "color", "flip") if getattr(cfg, k) > 0]
        self.predictors = nn.ModuleDict({
            k: projection_head(2 * d, cfg.hidden_dim, dims[k], num_layers=3) for k in self.tasks})
        self.sync_bn = getattr(base, "sync_bn", False)
        self._feats: list[torch.Tensor] = []
        self._capturing = False
        base.encoder.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        if self._capturing:
            self._feats.append(output)

    def setup(self, num_samples: int) -> None:
        self.base.setup(num_samples)

    def prepare(self, images: torch.Tensor) -> None:
        self.base.prepare(images)

    def views(self, images: torch.Tensor) -> list[torch.Tensor]:
        n = images.shape[0]
        x1, p1 = self.base.augment(images, return_params=True)
        x2, p2 = self.base.augment(images, return_params=True)
        return [x1, x2, pack_params(p1, n, x1.device), pack_params(p2, n, x1.device)]

    def training_step(self, views: list[torch.Tensor], progress: float,
                      batch: BatchInfo | None = None) -> StepOutput:
        x1, x2, p1, p2 = views
        n = x1.shape[0]
        self._feats, self._capturing = [], True
        try:
            out = self.base.training_step([x1, x2], progress, batch)
        finally:
            self._capturing = False
        feats, self._feats = self._feats, []
        rows = sum(f.shape[0] for f in feats)
        if rows == 2 * n:
            f = torch.cat(feats)
            f1, f2 = f[:n], f[n:]
        elif rows == n:             # the base fed only view 1 to its online backbone (MoCo v2)
            f1 = torch.cat(feats)
            f2 = self.base.encoder(x2)
        else:
            raise RuntimeError(f"AugSelf: {type(self.base).__name__} ran its backbone on {rows} "
                               f"images for a batch of {n} (expected {n} or {2 * n})")
        targets = augself_targets(p1, p2, self.ranges)
        loss, logs = out.loss, dict(out.logs)
        logs["loss_base"] = out.loss.item()
        for k in self.tasks:
            pred = self.predictors[k](torch.cat([f1, f2], 1))
            lk = augself_loss(pred, targets[k], k)
            if self.cfg.symmetric:
                back = -targets[k] if k != "flip" else targets[k]
                lk = (lk + augself_loss(self.predictors[k](torch.cat([f2, f1], 1)), back, k)) / 2
            loss = loss + getattr(self.cfg, k) * lk
            logs[f"loss_augself_{k}"] = lk.item()
        logs["loss"] = loss.item()
        return StepOutput(loss, logs, embeddings=out.embeddings)

    def after_optimizer_step(self, progress: float) -> None:
        self.base.after_optimizer_step(progress)

    @property
    def encoder(self) -> nn.Module:
        return self.base.encoder
