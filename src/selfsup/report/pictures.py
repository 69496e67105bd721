"""Picture grids for generative pretext tasks: rows = what (input, corrupted, reconstruction ...),
columns = images. Written with Pillow as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..augment.views import IMAGENET_MEAN, IMAGENET_STD, normalize


def grid_png(rows: dict[str, torch.Tensor], path: Path, scale: int = 3, pad: int = 2) -> Path:
    """Save images [N, 3, H, W] in [0, 1], one row per entry (same N, H, W), as a PNG grid
    upscaled ``scale`` times (nearest) so that 32 px images are visible."""
    from PIL import Image

    names = list(rows)
    n, _, h, w = rows[names[0]].shape
    hh, ww = h * scale, w * scale
    canvas = np.full((len(names) * (hh + pad) + pad, n * (ww + pad) + pad, 3), 255, np.uint8)
    for r, name in enumerate(names):
        imgs = rows[name].detach().float().cpu().clamp(0, 1)
        if imgs.shape[1] == 1:
            imgs = imgs.expand(-1, 3, -1, -1)
        imgs = F.interpolate(imgs, scale_factor=scale, mode="nearest")
        arr = (imgs.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        for c in range(min(n, len(arr))):
            y, x = pad + r * (hh + pad), pad + c * (ww + pad)
            canvas[y:y + hh, x:x + ww] = arr[c]
    path = Path(path)
    from .. import rundir

    with rundir.atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    rundir.write_text(path.with_suffix(".txt"), "rows, top to bottom: " + ", ".join(names) + "\n")
    return path


def save_method_pictures(method, dataset, size: int, run_dir: Path, n: int = 8,
                         device="cpu") -> Path | None:
    """If the method draws pictures (``method.pictures(x)``), save them for the first ``n``
    training images as ``run_dir/pictures.png`` (+ a .txt naming the rows)."""
    if not hasattr(method, "pictures"):
        return None
    x = dataset.batch(np.arange(min(n, len(dataset)))).to(device).float().div(255)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    was = method.training
    method.eval()
    torch.manual_seed(0)
    rows = method.pictures(normalize(x, IMAGENET_MEAN, IMAGENET_STD))
    method.train(was)
    return grid_png(rows, Path(run_dir) / "pictures.png")


def denormalize(x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x * s + m
