"""The downstream tasks of issue 6: mosaics with tile labels, dominant-hue labels, dense probe."""

import numpy as np
import torch
import torch.nn.functional as F

from selfsup import backbones
from selfsup.data import load_dataset
from selfsup.data.dataset import ImageDataset
from selfsup.evaluate.tasks import (dense_probe, hue_labels, mean_iou, mosaic_dataset,
                                    patch_rows, tile_rows)


def digits():
    return load_dataset("digits", split="train", image_size=16)


def test_mosaic_tiles_are_the_downscaled_images_with_their_labels():
    ds = digits()
    mosaics, maps = mosaic_dataset(ds, 20, seed=3, grid=2)
    assert mosaics.images.shape == (20, 16, 16, 3) and maps.shape == (20, 2, 2)
    assert (mosaics.labels == -1).all()    # unlabeled for pretraining; labels live in maps
    again, maps2 = mosaic_dataset(ds, 20, seed=3, grid=2)
    assert np.array_equal(again.images, mosaics.images) and np.array_equal(maps, maps2)
    # every tile is some training image, downscaled, of the class the map says
    src = torch.from_numpy(ds.images).permute(0, 3, 1, 2).float()
    small = F.interpolate(src, size=(8, 8), mode="bilinear", antialias=True,
                          align_corners=False).round().clamp(0, 255)
    for i in range(5):
        for r in range(2):
            for c in range(2):
                t = torch.from_numpy(mosaics.images[i, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8]
                                     ).permute(2, 0, 1).float()
                match = np.flatnonzero((small == t).flatten(1).all(1).numpy())
                assert len(match) and ds.labels[match[0]] == maps[i, r, c]


def test_hue_labels_of_pure_colours():
    def solid(rgb):
        return np.broadcast_to(np.array(rgb, np.uint8), (4, 4, 3))

    imgs = np.stack([solid(c) for c in [(255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255),
                                        (0, 0, 255), (255, 0, 255)]])
    # hue 0, 60, 120, ... degrees: sector k of 6 sectors starting at 0 degrees
    assert hue_labels(imgs, bins=6).tolist() == [0, 1, 2, 3, 4, 5]
    assert hue_labels(imgs, bins=12).tolist() == [0, 2, 4, 6, 8, 10]
    # a red with a little more blue than green has a hue just below 360 degrees: last sector
    assert hue_labels(np.stack([solid((200, 30, 40)), solid((30, 40, 200))]), bins=4).tolist() == [3, 2]
    # a half-red, half-yellow image: the circular mean (30 degrees) is the orange sector
    half = np.concatenate([solid((255, 0, 0))[:2], solid((255, 255, 0))[:2]])[None]
    assert hue_labels(half, bins=12).tolist() == [1]


def test_patch_rows_take_their_tile_label():
    feats = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    maps = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])
    x, y = patch_rows(feats, maps)
    assert x.shape == (32, 3) and y.shape == (32,)
    grid = y.reshape(2, 4, 4)
    assert grid[0, 0, 0] == 1 and grid[0, 1, 1] == 1 and grid[0, 0, 2] == 2 and grid[0, 3, 3] == 4
    assert np.array_equal(x[5], feats[0, :, 1, 1])
    assert mean_iou(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2) == (0.5 + 2 / 3) / 2


def test_tile_rows_average_the_patches_of_each_tile():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    maps = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])
    x, y = tile_rows(feats, maps)
    assert x.shape == (8, 3) and y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    for n in range(2):                      # naive loop over tiles
        for r in range(2):
            for c in range(2):
                ref = feats[n, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].mean((1, 2))
                assert np.allclose(x[n * 4 + r * 2 + c], ref, atol=1e-6)


def test_dense_probe_runs_on_a_vit():
    ds = digits()
    train, test = mosaic_dataset(ds, 40, seed=0), mosaic_dataset(ds, 20, seed=1)
    vit = backbones.create("vit_tiny", width=0.25, image_size=16, patch_size=4, depth=1)
    res = dense_probe(vit, train, test, num_classes=10)
    assert res["train_patches"] == 40 * 16 and res["test_patches"] == 20 * 16
    assert 0.0 <= res["patch_acc"] <= 1.0 and 0.0 <= res["patch_miou"] <= 1.0
    assert res["patch_acc"] > 0.15   # above chance (10 classes) even from a random ViT
    assert 0.0 <= res["tile_acc"] <= 1.0


def test_inputs_without_labels_are_refused():
    ds = ImageDataset(np.zeros((4, 8, 8, 3), np.uint8), np.full(4, -1), [], ["a"] * 4)
    try:
        mosaic_dataset(ds, 2)
    except ValueError as e:
        assert "labeled" in str(e)
    else:
        raise AssertionError("expected a ValueError")
