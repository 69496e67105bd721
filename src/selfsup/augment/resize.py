"""Progressive resizing of training views (``train.progressive_side``): the loop shrinks the
augmented views early in training and grows them to full size (BENCHMARKS.md 6: no gain on
fit's CIFAR-10 recipe, so `fit` does not use it)."""

from __future__ import annotations

import torch.nn.functional as F


def progressive_side(progress: float, start: int, full: int, until: float) -> int:
    """Progressive resizing (Howard's fast.ai DAWNBench runs, FFCV's ResNet recipes; Tan & Le,
    EfficientNetV2, 2021): the side of the training views at ``progress`` in [0, 1], growing
    linearly from ``start`` to ``full`` pixels over the first ``until`` of training, in multiples
    of 4 (few distinct shapes). A convolution's cost scales with the pixels, so early steps are
    cheap; the last ``1 - until`` of training, and every evaluation, are at full size."""
    if start <= 0 or start >= full:
        return full
    f = min(1.0, progress / until) if until > 0 else 1.0
    return min(full, max(4, int(start + (full - start) * f) // 4 * 4))


def resize_views(views, side: int, full: int) -> list:
    """Image views scaled by ``side / full`` (bilinear, antialiased), other tensors as they are."""
    if side >= full:
        return list(views)
    return [F.interpolate(v, size=(max(1, round(v.shape[-2] * side / full)),
                                   max(1, round(v.shape[-1] * side / full))),
                          mode="bilinear", antialias=True, align_corners=False)
            if v.dim() == 4 and v.is_floating_point() else v for v in views]
