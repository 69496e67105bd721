"""AugSelf (Lee et al., 2021): targets are the differences of the parameters the augmentation
actually sampled (checked against the pixels), and the wrapper composes with two-view methods."""

import pytest
import torch

from selfsup import backbones
from selfsup.augment import ViewAugment, ViewConfig
from selfsup.config import ConfigError, load_config
from selfsup.methods import METHODS
from selfsup.methods.augself import (AugSelf, AugSelfConfig, augself_loss, augself_targets,
                                     crop_target, pack_params)
from selfsup.pretrain import build_method

PLAIN = dict(mean=(0, 0, 0), std=(1, 1, 1))


def test_crop_target_from_pixels_with_flip_correction():
    torch.manual_seed(0)
    # pixel value = x coordinate: a view's mean is its crop's x centre, its slope says flipped
    n, side = 32, 64
    x = ((torch.arange(side) + 0.5) / side).view(1, 1, 1, side).expand(n, 3, side, side).contiguous()
    aug = ViewAugment(ViewConfig(size=16, color=False, flip_p=0.5), **PLAIN)
    y, p = aug(x, return_params=True)
    packed = pack_params(p, n, y.device)
    centre = y.mean((1, 2, 3))                                  # in the image's frame
    flipped = y[:, 0, 0, 0] > y[:, 0, 0, -1]
    assert torch.equal(flipped, p["flip"].bool()) and 0 < flipped.sum() < n
    # in the view's own frame the centre is mirrored when the view was flipped
    expected = torch.where(flipped, 1 - centre, centre)
    assert torch.allclose(crop_target(packed)[:, 0], expected, atol=0.02)
    assert torch.allclose(crop_target(packed)[:, 2:], p["crop"][:, 2:])


def test_color_target_from_pixels():
    torch.manual_seed(1)
    n = 64
    x = torch.full((n, 3, 8, 8), 0.5)
    cfg = ViewConfig(size=8, crop=False, flip_p=0.0, brightness=0.4, contrast=0.0,
                     saturation=0.0, hue=0.0, jitter_p=0.5, gray_p=0.0)
    aug = ViewAugment(cfg, **PLAIN)
    y1, p1 = aug(x, return_params=True)
    y2, p2 = aug(x, return_params=True)
    t = augself_targets(pack_params(p1, n, "cpu"), pack_params(p2, n, "cpu"), (0.4, 0.0, 0.0, 0.0))
    # kornia's brightness multiplies by the factor (as torchvision's): factor = pixel / 0.5, the
    # normalised factor (factor - 1) / 0.4, and 0 where jitter was not applied
    def norm(y):
        return (y[:, 0, 0, 0] / 0.5 - 1) / 0.4

    from_pixels = norm(y1) - norm(y2)
    assert torch.allclose(t["color"][:, 0], from_pixels, atol=1e-5)
    assert (t["color"][:, 1:] == 0).all()
    untouched = (p1["color_applied"] == 0) & (p2["color_applied"] == 0)
    assert untouched.any() and (t["color"][untouched] == 0).all()
    assert t["color"].abs().max() <= 2 + 1e-6     # each normalised factor is in [-1, 1]


def test_targets_are_view1_minus_view2_and_flip_is_disagreement():
    p1 = torch.tensor([[0.3, 0.4, 0.5, 0.6, 0, 1.2, 0.9, 1.0, 0.05, 1],
                       [0.5, 0.5, 1.0, 1.0, 1, 1.0, 1.0, 1.0, 0.00, 0]])
    p2 = torch.tensor([[0.6, 0.5, 0.2, 0.2, 1, 0.8, 1.0, 1.1, -0.05, 1],
                       [0.2, 0.5, 0.4, 0.4, 1, 1.3, 1.0, 1.0, 0.00, 1]])
    t = augself_targets(p1, p2, (0.4, 0.4, 0.4, 0.1))
    # crop: view 2 of sample 0 is flipped, so its x centre counts as 1 - 0.6 = 0.4
    assert torch.allclose(t["crop"][0], torch.tensor([0.3 - 0.4, -0.1, 0.3, 0.4]))
    assert torch.allclose(t["crop"][1], torch.tensor([0.5 - 0.8, 0.0, 0.6, 0.6]))
    assert torch.allclose(t["color"][0], torch.tensor([0.5 + 0.5, -0.25, -0.25, 1.0]))
    assert torch.allclose(t["color"][1], torch.tensor([-0.75, 0.0, 0.0, 0.0]))  # view 1: no jitter
    assert t["flip"].squeeze(1).tolist() == [1.0, 0.0]


def test_loss_is_mse_of_tanh_and_bce_for_flip():
    pred, target = torch.randn(5, 4), torch.rand(5, 4) * 2 - 1
    assert torch.allclose(augself_loss(pred, target, "crop"),
                          ((torch.tanh(pred) - target) ** 2).mean())
    logit, same = torch.randn(5, 1), torch.randint(0, 2, (5, 1)).float()
    p = torch.sigmoid(logit)
    ref = -(same * p.log() + (1 - same) * (1 - p).log()).mean()
    assert torch.allclose(augself_loss(logit, same, "flip"), ref, atol=1e-6)


SMALL = {"simclr": {}, "simsiam": {"proj_dim": 32, "pred_hidden_dim": 16},
         "mocov2": {"queue_size": 16, "bn_splits": 2},
         "byol": {"hidden_dim": 32, "out_dim": 16}}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_composes_and_feeds_the_backbone_features_of_both_views(name):
    torch.manual_seed(0)
    base = METHODS.get(name)(backbones.create("convnet", width=0.25),
                             METHODS.get(name).Config(**SMALL[name]), ViewConfig(size=16))
    method = AugSelf(base, AugSelfConfig(crop=1.0, color=1.0, flip=0.5, hidden_dim=16))
    images = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    method.setup(8)
    method.eval()   # BN in eval: the features are a function of the view alone
    seen = []
    method.predictors["crop"].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    views = method.views(images)
    assert len(views) == 4 and views[2].shape == (8, 10)
    out = method.training_step(views, 0.0)
    d = base.encoder.embed_dim
    with torch.no_grad():
        f1, f2 = base.encoder(views[0]), base.encoder(views[1])
    assert torch.allclose(seen[0], torch.cat([f1, f2], 1), atol=1e-5)
    assert torch.allclose(seen[1], torch.cat([f2, f1], 1), atol=1e-5)   # the symmetric order
    assert seen[0].shape == (8, 2 * d)
    assert {"loss_base", "loss_augself_crop", "loss_augself_color", "loss_augself_flip"} <= set(out.logs)
    # the total is the base loss plus the weighted auxiliary losses
    total = out.logs["loss_base"] + out.logs["loss_augself_crop"] + out.logs["loss_augself_color"] \
        + 0.5 * out.logs["loss_augself_flip"]
    assert out.loss.item() == pytest.approx(total, rel=1e-5)
    # contract: backward reaches the encoder and every predictor; the step changed no state
    method.train()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    out = method.training_step(method.views(images), 0.0)
    out.loss.backward()
    for k, v in method.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, before[k]), k
    assert all(p.grad is not None for p in method.encoder.parameters())
    assert all(p.grad is not None for p in method.predictors.parameters())
    method.after_optimizer_step(0.1)
    assert method.encoder is base.encoder


def test_config_keys_build_the_wrapper_and_errors_name_the_keys():
    cfg = load_config(None, ["method.name=simsiam", "method.augself_crop=1.0",
                             "method.augself_color=0.5", "model.width=0.25", "augment.size=16"])
    method = build_method(cfg)
    assert isinstance(method, AugSelf) and method.tasks == ["crop", "color"]
    assert type(cfg.method_config()).__name__ == "SimSiamConfig"
    plain = build_method(load_config(None, ["method.augself_crop=0", "method.augself_color=0",
                                            "model.width=0.25", "augment.size=16"]))
    assert not isinstance(plain, AugSelf)
    with pytest.raises(ConfigError, match="augself_colour.*augself_color"):
        load_config(None, ["method.augself_colour=1.0"])
    with pytest.raises(ConfigError, match="augment.color"):
        build_method(load_config(None, ["method.augself_color=1.0", "augment.color=false",
                                        "model.width=0.25"]))
    with pytest.raises(ConfigError, match="two-view"):
        build_method(load_config(None, ["method.name=rotnet", "method.augself_crop=1.0",
                                        "model.width=0.25"]))
