"""Joint-embedding predictive architectures (I-JEPA, Assran et al., CVPR 2023): multi-block
masking and the regression loss in representation space.

Masking (paper Sec. 3 and facebookresearch/ijepa ``src/masks/multiblock.py``), on a grid of
g x g patches, per batch:
- one target-block size: scale s ~ U(0.15, 0.2) of the patches, aspect ratio r ~ U(0.75, 1.5);
  h = round(sqrt(int(g^2 s) r)), w = round(sqrt(int(g^2 s) / r)), each at most g - 1;
- one context-block size: scale ~ U(0.85, 1.0), aspect ratio 1, same rounding;
- per image: M = 4 target blocks at uniformly random positions (they may overlap each other),
  one context block at a random position minus every target patch, so the context never sees a
  target; a context with min_keep patches or fewer is re-drawn (20 tries), then - as the
  official code's loosening does - drawn without the exclusion;
- contexts differ in size; a batch keeps the smallest size, each image a random subset of its
  context patches.
Differences from the official code, each for uniformity: scale and
aspect ratio are drawn independently (the official draws one uniform number for both, so big
blocks are always tall); a block may sit against the last row/column (the official
``randint(0, g - h)`` never places one there); the context is cut to the batch's size by a
random subset (the official keeps the first indices in raster order, dropping bottom rows).

Loss: the target encoder's patch tokens, layer-normalised over the feature dimension (no affine),
taken at each target block's patches; smooth-L1 (beta 1) against the predictor's output,
averaged over blocks, patches and features (``F.smooth_l1_loss(z, h)`` in the official train.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._precision import at_least_float32


@dataclass
class BlockMasks:
    context: torch.Tensor        # [B, n_ctx] patch indices the context encoder sees (sorted)
    targets: torch.Tensor        # [B, M, h*w] patch indices of each target block (raster order)
    target_size: tuple[int, int]
    context_size: tuple[int, int]


def block_size(grid: int, scale: float, aspect: float) -> tuple[int, int]:
    """(h, w) in patches of a block covering ``scale`` of a grid x grid image with aspect ratio
    h/w = ``aspect``, rounded as the official MaskCollator: h = round(sqrt(k r)), w =
    round(sqrt(k / r)) with k = int(grid^2 scale), then each cut to grid - 1 (and at least 1)."""
    k = int(grid * grid * scale)
    h = int(round(math.sqrt(k * aspect)))
    w = int(round(math.sqrt(k / aspect)))
    return max(1, min(h, grid - 1)), max(1, min(w, grid - 1))


def _boxes(batch: int, n: int, grid: int, h: int, w: int,
           generator: torch.Generator | None) -> torch.Tensor:
    """[batch, n, grid, grid] bool: n h x w blocks per image at uniformly random positions."""
    top = torch.randint(0, grid - h + 1, (batch, n, 1), generator=generator)
    left = torch.randint(0, grid - w + 1, (batch, n, 1), generator=generator)
    pos = torch.arange(grid)
    rows = (pos >= top) & (pos < top + h)                       # [batch, n, grid]
    cols = (pos >= left) & (pos < left + w)
    return rows[..., :, None] & cols[..., None, :]


def multiblock_masks(batch: int, grid: int, n_targets: int = 4,
                     target_scale: tuple[float, float] = (0.15, 0.2),
                     target_aspect: tuple[float, float] = (0.75, 1.5),
                     context_scale: tuple[float, float] = (0.85, 1.0), min_keep: int = 10,
                     generator: torch.Generator | None = None, tries: int = 20) -> BlockMasks:
    """I-JEPA's context and target blocks for a batch of images on a grid x grid patch grid."""
    u = torch.rand(3, generator=generator).tolist()
    s = target_scale[0] + u[0] * (target_scale[1] - target_scale[0])
    r = target_aspect[0] + u[1] * (target_aspect[1] - target_aspect[0])
    th, tw = block_size(grid, s, r)
    ch, cw = block_size(grid, context_scale[0] + u[2] * (context_scale[1] - context_scale[0]), 1.0)

    targets = _boxes(batch, n_targets, grid, th, tw, generator)  # [B, M, g, g]
    covered = targets.any(1)
    context = _boxes(batch, 1, grid, ch, cw, generator)[:, 0] & ~covered
    for _ in range(tries):
        small = context.flatten(1).sum(1) <= min_keep
        if not small.any():
            break
        redraw = _boxes(batch, 1, grid, ch, cw, generator)[:, 0] & ~covered
        context = torch.where(small[:, None, None], redraw, context)
    small = context.flatten(1).sum(1) <= min_keep
    if small.any():   # no context block avoids the targets: let it overlap them
        context = torch.where(small[:, None, None],
                              _boxes(batch, 1, grid, ch, cw, generator)[:, 0], context)

    flat = context.flatten(1)
    n_ctx = int(flat.sum(1).min())
    score = torch.rand(flat.shape, generator=generator).masked_fill(~flat, -1.0)
    ctx_idx = score.topk(n_ctx, dim=1).indices.sort(dim=1).values
    tgt_idx = targets.flatten(2).nonzero()[:, 2].view(batch, n_targets, th * tw)
    return BlockMasks(ctx_idx, tgt_idx, (th, tw), (ch, cw))


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D] at patch indices [B, ...] -> [B, ..., D]."""
    b, d = tokens.shape[0], tokens.shape[-1]
    flat = index.reshape(b, -1)
    out = torch.gather(tokens, 1, flat[..., None].expand(-1, -1, d))
    return out.view(*index.shape, d)


def ijepa_loss(pred: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 (beta 1) between the predictions [..., D] and the target encoder's tokens at the
    same patches, the latter layer-normalised over D without affine parameters; mean over all."""
    pred, target_tokens = at_least_float32(pred), at_least_float32(target_tokens)
    target = F.layer_norm(target_tokens, target_tokens.shape[-1:])
    return F.smooth_l1_loss(pred, target)
