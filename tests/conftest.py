import os

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def make_image(path, color, size=(20, 16), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[...] = color
    arr[: size[1] // 2, : size[0] // 2] = 255 - np.array(color)  # some structure
    Image.fromarray(arr).convert(mode).save(path)


@pytest.fixture
def class_folder(tmp_path):
    """Two classes of tiny real PNG/JPEG images, 12 per class."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for cls, base in (("salmon", (250, 120, 100)), ("trout", (90, 140, 60))):
        for i in range(12):
            c = np.clip(np.array(base) + rng.integers(-20, 20, 3), 0, 255).astype(int).tolist()
            ext = "png" if i % 2 else "jpg"
            make_image(root / cls / f"{i:03d}.{ext}", c)
    return root
