"""Downstream tasks built from real labeled images, for effects that plain classification hides.

- ``mosaic_dataset``: grid x grid mosaics of different images (each tile a downscaled image), with
  a label per tile: a dense task (which class is under each patch?) where only patch features that
  describe their own region do well - the task SelfPatch (Yun et al., 2022) is about.
- ``hue_labels``: the dominant hue of each image (saturation-weighted circular mean of the
  pixels' hue, in ``bins`` equal sectors): a property colour jitter destroys, so a representation
  made invariant to jitter loses it - the task AugSelf (Lee et al., 2021) is about.
- ``dense_probe``: a linear classifier on frozen patch features (``encoder.forward_map``), one row
  per patch, labelled by the tile it lies in; patch accuracy and mean IoU on held-out mosaics.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..augment.views import IMAGENET_MEAN, IMAGENET_STD, normalize
from ..data.dataset import ImageDataset


def mosaic_dataset(ds: ImageDataset, n: int, seed: int = 0, grid: int = 2
                   ) -> tuple[ImageDataset, np.ndarray]:
    """``n`` mosaics of ``grid`` x ``grid`` distinct random images of ``ds`` (each resized to
    side / grid, antialiased), at the dataset's image size. Returns (the mosaics as an unlabeled
    ImageDataset, tile labels [n, grid, grid])."""
    side = ds.image_size
    if side % grid:
        raise ValueError(f"image size {side} is not divisible by the mosaic grid {grid}")
    if not ds.has_labels:
        raise ValueError(f"{ds.source or 'dataset'}: mosaics need labeled images")
    rng = np.random.default_rng(seed)
    labeled = np.flatnonzero(ds.labels >= 0)
    tile = side // grid
    out = np.empty((n, side, side, 3), np.uint8)
    maps = np.empty((n, grid, grid), np.int64)
    names = []
    for start in range(0, n, 512):
        m = min(512, n - start)
        pick = np.stack([rng.choice(labeled, grid * grid, replace=False) for _ in range(m)])
        x = torch.from_numpy(np.ascontiguousarray(ds.images[pick.reshape(-1)])).permute(0, 3, 1, 2)
        small = F.interpolate(x.float(), size=(tile, tile), mode="bilinear", antialias=True,
                              align_corners=False).round().clamp(0, 255).to(torch.uint8)
        small = small.view(m, grid, grid, 3, tile, tile).permute(0, 1, 4, 2, 5, 3)
        out[start:start + m] = small.reshape(m, side, side, 3).numpy()
        maps[start:start + m] = ds.labels[pick].reshape(m, grid, grid)
        names += [f"mosaic-{seed}-{start + i}" for i in range(m)]
    mosaics = ImageDataset(out, np.full(n, -1, np.int64), list(ds.classes), names,
                           source=f"mosaics of {ds.source}")
    return mosaics, maps


def hue_labels(images: np.ndarray, bins: int = 6) -> np.ndarray:
    """[N, H, W, 3] uint8 -> [N] the sector (of ``bins``) of each image's saturation-weighted
    circular mean hue (HSV)."""
    x = images.astype(np.float32) / 255
    mx, mn = x.max(-1), x.min(-1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-8), 0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    d = np.maximum(delta, 1e-8)
    hue = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    angle = hue / 6 * 2 * np.pi
    w = sat * mx
    s, c = (w * np.sin(angle)).sum((1, 2)), (w * np.cos(angle)).sum((1, 2))
    mean = np.arctan2(s, c) % (2 * np.pi)
    return np.minimum((mean / (2 * np.pi) * bins).astype(np.int64), bins - 1)


@torch.no_grad()
def patch_features(encoder, ds: ImageDataset, batch_size: int = 256, device="cpu",
                   mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Frozen patch features [N, D, g, g] from ``encoder.forward_map`` (eval mode)."""
    if not hasattr(encoder, "forward_map"):
        raise ValueError("the dense probe needs an encoder with forward_map (patch features)")
    was = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, len(ds), batch_size):
            idx = np.arange(start, min(start + batch_size, len(ds)))
            x = normalize(ds.batch(idx).to(device).float().div_(255), mean, std)
            out.append(encoder.forward_map(x).float().cpu())
    finally:
        encoder.train(was)
    return torch.cat(out).numpy()


def patches_per_tile(grid: int, tiles: int) -> int:
    """Patches along one side of a tile; a grid that does not split into the tiles is refused."""
    if grid % tiles:
        raise ValueError(f"a {grid}x{grid} patch grid does not split into {tiles}x{tiles} tiles")
    return grid // tiles


def patch_rows(feats: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, D, g, g] features and [N, t, t] tile labels -> ([N*g*g, D], [N*g*g]); patch (r, c)
    takes the label of the tile containing it (g must be a multiple of t)."""
    n, d, g, _ = feats.shape
    k = patches_per_tile(g, maps.shape[1])
    labels = np.repeat(np.repeat(maps, k, axis=1), k, axis=2)
    return feats.transpose(0, 2, 3, 1).reshape(-1, d), labels.reshape(-1)


def tile_rows(feats: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, D, g, g] features and [N, t, t] tile labels -> ([N*t*t, D], [N*t*t]): the mean of the
    patch features inside each tile (g must be a multiple of t)."""
    n, d, g, _ = feats.shape
    t = maps.shape[1]
    k = patches_per_tile(g, t)
    pooled = feats.reshape(n, d, t, k, t, k).mean((3, 5))
    return pooled.transpose(0, 2, 3, 1).reshape(-1, d), maps.reshape(-1)


def mean_iou(pred: np.ndarray, true: np.ndarray, num_classes: int) -> float:
    ious = []
    for c in range(num_classes):
        union = np.sum((pred == c) | (true == c))
        if union:
            ious.append(np.sum((pred == c) & (true == c)) / union)
    return float(np.mean(ious))


def dense_probe(encoder, train: tuple[ImageDataset, np.ndarray], test: tuple[ImageDataset, np.ndarray],
                num_classes: int, max_rows: int = 40000, seed: int = 0, device="cpu") -> dict:
    """Linear probe on frozen patch features: {'patch_acc', 'patch_miou', 'linear_C'}. At most
    ``max_rows`` training patches (sampled by seed); L2 chosen on a validation split."""
    from .linear import linear_probe

    ftr = patch_features(encoder, train[0], device=device)
    fte = patch_features(encoder, test[0], device=device)
    xtr, ytr = patch_rows(ftr, train[1])
    xte, yte = patch_rows(fte, test[1])
    if len(ytr) > max_rows:
        keep = np.random.default_rng(seed).choice(len(ytr), max_rows, replace=False)
        xtr, ytr = xtr[keep], ytr[keep]
    res = linear_probe(xtr, ytr, xte, yte, seed=seed, return_predictions=True)
    # the same probe on each tile's mean patch feature: whether the tokens carry the tile's
    # class at all, with the per-patch noise averaged out
    tiles = linear_probe(*tile_rows(ftr, train[1]), *tile_rows(fte, test[1]), seed=seed)
    return {"patch_acc": res["linear_acc"], "patch_miou": mean_iou(res["predictions"], yte,
                                                                   num_classes),
            "linear_C": res["linear_C"], "train_patches": int(len(ytr)),
            "test_patches": int(len(yte)), "tile_acc": tiles["linear_acc"]}
