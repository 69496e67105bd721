"""A segmentation task the project builds itself: rendered scenes (``data/render.py``) with the
semantic class of every pixel (``SEG_CLASSES``: ground, wall, sphere, box).

Fixed, seeded splits (the same images on every machine and every call):

- ``train``: 10,000 scenes, default appearance (the unlabeled pool; masks exist but a
  semi-supervised method sees only the few it is given);
- ``test``: 1,000 scenes, default appearance (in-domain);
- ``shifted``: 1,000 scenes, ``appearance="shifted"`` (pale colours, fine checks everywhere, flat
  light from the left: the same kind of geometry, another look; out-of-domain);

``labeled_scenes(n, size, seed)`` renders the few labeled masks a semi-supervised method gets
(default appearance, seeds from 1,000 on: none of them is a training or test image).

``load_dataset("scenes", split=...)`` gives the images as an unlabeled ``ImageDataset`` (the
pretraining loop's input); ``scene_split`` gives images and masks.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .render import SEG_CLASSES, random_scenes, render, segmentation_classes

MAX_SPHERES, MAX_BOXES = 3, 2
SPLITS = {"train": (10_000, 0, "default"), "test": (1_000, 1, "default"),
          "shifted": (1_000, 2, "shifted")}


def render_segmentation(n: int, size: int, seed: int, appearance: str = "default",
                        chunk: int = 250, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded scenes -> (uint8 images [n, size, size, 3], int64 class masks [n, size, size],
    -1 where nothing was hit). Rendered in chunks of ``chunk`` with one generator, so the result
    depends on ``n``, ``seed``, ``chunk`` and ``appearance`` only."""
    g = torch.Generator().manual_seed(int(seed))
    imgs, masks = [], []
    for start in range(0, n, chunk):
        b = min(chunk, n - start)
        out = render(random_scenes(b, MAX_SPHERES, MAX_BOXES, generator=g, appearance=appearance),
                     size, supersample)
        imgs.append((out["image"] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        masks.append(segmentation_classes(out["ids"], MAX_SPHERES).numpy())
    return np.concatenate(imgs), np.concatenate(masks).astype(np.int64)


@functools.lru_cache(maxsize=8)
def _split(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    n, seed, appearance = SPLITS[split]
    images, masks = render_segmentation(n, size, seed, appearance)
    images.setflags(write=False)
    masks.setflags(write=False)
    return images, masks


def scene_split(split: str, size: int = 32, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, H, W, 3] uint8, masks [N, H, W] int64) of a fixed split (the first ``n``)."""
    if split not in SPLITS:
        from .sources import DataError

        raise DataError(f"dataset 'scenes' has splits {', '.join(SPLITS)}; got '{split}'")
    images, masks = _split(split, int(size))
    return (images, masks) if n is None else (images[:n], masks[:n])


def labeled_scenes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labeled scenes (images, masks) of the default appearance for label seed ``seed``."""
    return render_segmentation(n, size, 1000 + int(seed))


def load_scenes(path=None, split=None, image_size: int = 32, **kw):
    """The ``scenes`` dataset's images (no class labels: the task is per pixel)."""
    from .dataset import ImageDataset

    split = split or "train"
    images, _ = scene_split(split, image_size)
    return ImageDataset(images, np.full(len(images), -1, np.int64), [],
                        [f"{split}/{i:05d}" for i in range(len(images))],
                        source=f"scenes:{split}")


__all__ = ["SEG_CLASSES", "SPLITS", "labeled_scenes", "load_scenes", "render_segmentation", "scene_split"]
