import torch

from selfsup.augment import ViewAugment, ViewConfig, view_preset
from selfsup.augment.views import IMAGENET_MEAN, IMAGENET_STD


def images(n=16, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_independent_draws_per_sample_and_params():
    torch.manual_seed(0)
    aug = ViewAugment(view_preset(32))
    x, p = aug(images(), return_params=True)
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert set(p) == {"crop", "flip", "color", "color_applied", "gray"}
    assert p["crop"].shape == (16, 4) and p["color"].shape == (16, 4)
    # every sample gets its own crop box and jitter factors
    assert len({tuple(r) for r in p["crop"].tolist()}) == 16
    assert len(set(p["color"][:, 0].tolist())) == 16
    assert 0 < p["flip"].sum() < 16
    cx, cy, w, h = p["crop"].unbind(1)
    area = w * h
    assert ((area > 0.08 * 0.9) & (area <= 1.0 + 1e-6)).all()
    assert ((cx - w / 2 >= -1e-6) & (cx + w / 2 <= 1 + 1e-6)).all()
    b = p["color"][:, 0]
    assert ((b >= 0.6 - 1e-6) & (b <= 1.4 + 1e-6)).all()  # brightness 0.4


def test_flip_params_match_pixels():
    torch.manual_seed(1)
    cfg = ViewConfig(size=8, crop=False, color=False, flip_p=0.5)
    aug = ViewAugment(cfg, mean=(0, 0, 0), std=(1, 1, 1))
    x = torch.rand(32, 3, 8, 8)
    y, p = aug(x, return_params=True)
    flipped = torch.isclose(y, x.flip(-1), atol=1e-6).flatten(1).all(1)
    same = torch.isclose(y, x, atol=1e-6).flatten(1).all(1)
    assert torch.equal(flipped, p["flip"].bool()) and torch.equal(same, ~p["flip"].bool())


def test_crop_params_locate_the_crop():
    torch.manual_seed(2)
    # an image whose pixel value encodes its x coordinate: the crop's mean reveals its centre
    x = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(8, 3, 64, 64).contiguous()
    aug = ViewAugment(ViewConfig(size=16, color=False, flip_p=0.0), mean=(0, 0, 0), std=(1, 1, 1))
    y, p = aug(x, return_params=True)
    assert torch.allclose(y.mean((1, 2, 3)), p["crop"][:, 0], atol=0.03)


def test_toggles_and_normalisation():
    aug = ViewAugment(ViewConfig(size=32, crop=False, color=False, flip_p=0.0))
    x = torch.rand(2, 3, 32, 32)
    y, p = aug(x, return_params=True)
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert p == {} and torch.allclose(y, (x - m) / s, atol=1e-6)


def test_large_preset_has_blur():
    assert view_preset(32).blur_p == 0 and view_preset(96).blur_p == 0.5
    y, p = ViewAugment(view_preset(96))(torch.rand(2, 3, 120, 100), return_params=True)
    assert y.shape == (2, 3, 96, 96) and "blur" in p
