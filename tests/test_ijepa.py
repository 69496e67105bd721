"""I-JEPA (issue 22): multi-block masking within the paper's ranges, a context that never sees a
target, the loss against a hand-written reference, the predictor, the EMA schedule and the
mean-pooled ViT without a class token."""

import json
import math

import numpy as np
import pytest
import torch

from selfsup import backbones
from selfsup.augment import ViewConfig
from selfsup.losses.predictive import (block_size, gather_tokens, ijepa_loss,
                                       multiblock_masks)
from selfsup.methods import METHODS


def _naive_block(grid, scale, aspect):
    k = math.floor(grid * grid * scale)
    h, w = round((k * aspect) ** 0.5), round((k / aspect) ** 0.5)
    while h >= grid:
        h -= 1
    while w >= grid:
        w -= 1
    return h, w


def test_block_size_rounds_as_the_official_collator():
    g = torch.Generator().manual_seed(0)
    for grid in (8, 14, 16):
        for _ in range(200):
            s = 0.15 + 0.05 * torch.rand(1, generator=g).item()
            r = 0.75 + 0.75 * torch.rand(1, generator=g).item()
            assert block_size(grid, s, r) == _naive_block(grid, s, r)
    # the context block: aspect 1, scale 0.85-1 of a 16 x 16 grid (ImageNet at 14 px) -> 13-15
    assert block_size(16, 0.85, 1.0) == (15, 15) and block_size(8, 1.0, 1.0) == (7, 7)


@pytest.mark.parametrize("grid", [8, 16])
def test_multiblock_masks_follow_the_paper(grid):
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        m = multiblock_masks(16, grid, generator=g)
        b, n_t, k = m.targets.shape
        assert (b, n_t) == (16, 4)
        th, tw = m.target_size
        assert k == th * tw
        # the drawn block sizes are the paper's ranges after the collator's rounding
        lo, hi = _naive_block(grid, 0.15, 0.75), _naive_block(grid, 0.2, 1.5)
        assert min(lo[0], hi[0]) - 1 <= th <= max(lo[0], hi[0]) + 1
        area = th * tw / grid ** 2
        assert 0.1 <= area <= 0.25, area   # 0.15-0.2 up to rounding to whole patches
        assert m.context_size[0] == m.context_size[1] >= math.floor(math.sqrt(0.85 * grid ** 2)) - 1
        for i in range(b):
            ctx = set(m.context[i].tolist())
            assert len(ctx) == m.context.shape[1] > 10          # unique, more than min_keep
            assert m.context[i].tolist() == sorted(ctx)
            for j in range(n_t):   # every target is a contiguous th x tw rectangle
                rows = {p // grid for p in m.targets[i, j].tolist()}
                cols = {p % grid for p in m.targets[i, j].tolist()}
                assert len(rows) == th and len(cols) == tw
                assert max(rows) - min(rows) == th - 1 and max(cols) - min(cols) == tw - 1
                assert not ctx & set(m.targets[i, j].tolist())   # the context never sees it


def test_context_falls_back_to_overlap_when_nothing_else_fits():
    # a 4 x 4 grid: the context block is 3 x 3 = 9 patches, min_keep 9 cannot be met
    m = multiblock_masks(4, 4, min_keep=9, generator=torch.Generator().manual_seed(0))
    assert m.context.shape == (4, 9)


def test_ijepa_loss_matches_a_hand_written_reference():
    torch.manual_seed(0)
    pred = torch.randn(2, 3, 5, 6, dtype=torch.float64) * 2
    tgt = torch.randn(2, 3, 5, 6, dtype=torch.float64) * 3 + 1
    total, count = 0.0, 0
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in pred.shape[:3])):
        t = tgt[tuple(idx)]
        mean = sum(t.tolist()) / 6
        var = sum((v - mean) ** 2 for v in t.tolist()) / 6          # biased, as LayerNorm
        normed = [(v - mean) / math.sqrt(var + 1e-5) for v in t.tolist()]
        for p, q in zip(pred[tuple(idx)].tolist(), normed):
            d = abs(p - q)
            total += 0.5 * d * d if d < 1 else d - 0.5
            count += 1
    loss = ijepa_loss(pred, tgt)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(total / count, rel=1e-12)
    # a perfect prediction of the normalised target costs nothing
    normed = torch.nn.functional.layer_norm(tgt, (6,))
    assert ijepa_loss(normed, tgt).item() == pytest.approx(0.0, abs=1e-12)


def test_gather_tokens_picks_the_indexed_patches():
    tokens = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)
    idx = torch.tensor([[[0, 5], [2, 3]], [[1, 1], [4, 0]]])
    out = gather_tokens(tokens, idx)
    assert out.shape == (2, 2, 2, 3)
    assert torch.equal(out[1, 1, 0], tokens[1, 4]) and torch.equal(out[0, 0, 1], tokens[0, 5])


def _method(**cfg):
    torch.manual_seed(0)
    vit = backbones.create("vit_tiny", width=0.25, image_size=32, patch_size=4, depth=2,
                           pool="mean")
    cls = METHODS.get("ijepa")
    return cls(vit, cls.Config(pred_dim=16, pred_depth=1, pred_heads=2, **cfg),
               ViewConfig(size=32))


def test_the_context_encoder_never_sees_a_target_patch():
    """Gradient of the loss w.r.t. the input pixels: non-zero on the context's patches, exactly
    zero on every patch outside the context (the target encoder runs without gradient)."""
    method = _method()
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    masks = multiblock_masks(3, 8, generator=torch.Generator().manual_seed(3))
    pred, h = method.predict(x, masks)
    assert pred.shape == h.shape == (3, 4, masks.targets.shape[2], method.backbone.embed_dim)
    ijepa_loss(pred, h).backward()
    per_patch = x.grad.abs().sum(1).view(3, 8, 4, 8, 4).sum((2, 4)).flatten(1)   # [B, 64]
    for i in range(3):
        seen = torch.zeros(64, dtype=torch.bool)
        seen[masks.context[i]] = True
        assert (per_patch[i, seen] > 0).all()
        assert (per_patch[i, ~seen] == 0).all()


def test_predictions_depend_on_where_the_target_is():
    method = _method().eval()
    z = torch.randn(1, 5, method.backbone.embed_dim)
    ctx = torch.tensor([[0, 1, 2, 3, 4]])
    a = method.predictor(z, ctx, torch.tensor([[[20, 21]]]))
    b = method.predictor(z, ctx, torch.tensor([[[40, 41]]]))
    assert not torch.allclose(a, b)
    # ... and not on the order in which the context tokens come (attention, no order)
    perm = torch.tensor([3, 0, 4, 1, 2])
    c = method.predictor(z[:, perm], ctx[:, perm], torch.tensor([[[20, 21]]]))
    assert torch.allclose(a, c, atol=1e-6)


def test_target_encoder_follows_the_linear_momentum_schedule():
    method = _method()
    assert method.momentum(0.0) == pytest.approx(0.996)
    assert method.momentum(0.5) == pytest.approx(0.998)
    assert method.momentum(1.0) == 1.0
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.target_encoder.parameters()]
    method.after_optimizer_step(1.0)          # momentum 1: the target does not move
    assert all(torch.equal(a, b) for a, b in zip(before, method.target_encoder.parameters()))
    method.after_optimizer_step(0.0)          # 0.996: moves 0.4% of the way
    online = list(method.backbone.parameters())
    for a, b, o in zip(before, method.target_encoder.parameters(), online):
        assert torch.allclose(b, 0.996 * a + 0.004 * o)


def test_mean_pooled_vit_has_no_class_token_and_ijepa_refuses_one():
    vit = backbones.create("vit_tiny", width=0.25, image_size=16, depth=1, pool="mean")
    assert vit.cls_token is None and "cls_token" not in vit.state_dict()
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(vit(x), vit.forward_tokens(x).mean(1))
    assert vit.forward_map(x).shape == (2, vit.embed_dim, 4, 4)
    cls_vit = backbones.create("vit_tiny", width=0.25, image_size=16, depth=1)
    with pytest.raises(ValueError, match="model.pool=mean"):
        METHODS.get("ijepa")(cls_vit, None, ViewConfig(size=16))
    with pytest.raises(ValueError, match="model.pool=cls"):
        METHODS.get("mae")(vit, None, ViewConfig(size=16))


def test_ijepa_pretrains_on_real_images_and_its_mean_pooled_vit_deploys(tmp_path):
    """Pretrain on real digits, fine-tune from it, reload the saved classifier: the
    no-class-token ViT travels through config, checkpoint and model metadata."""
    from selfsup.config import load_config
    from selfsup.pretrain import load_encoder, pretrain
    from selfsup.semisupervised import load_classifier, train_semisup

    vit = ["model.width=0.25", "model.depth=2", "augment.size=16", "data.image_size=16"]
    cfg = load_config("ijepa_cifar10_cpu", ["data.dataset=digits", "train.steps=6",
                                            "train.batch_size=32", "train.progress=false",
                                            "eval.monitor_size=64", "method.min_keep=4",
                                            "method.pred_dim=24", "method.pred_depth=1", *vit])
    run, summary = pretrain(cfg, tmp_path / "ijepa")
    rows = [r for r in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in r]
    assert rows and all(np.isfinite(json.loads(r)["loss"]) for r in rows)
    encoder, _ = load_encoder(run)
    assert encoder.cls_token is None
    ft = load_config("fixmatch_digits", ["method.name=supervised", "train.steps=4",
                                         "train.eval_every=4", "train.progress=false",
                                         "data.labels_per_class=5", "model.backbone=vit_tiny",
                                         "model.pool=mean", "model.channels_last=false", *vit])
    clf_run, _ = train_semisup(ft, tmp_path / "ft", init=run)
    model, meta = load_classifier(clf_run)
    assert meta["pool"] == "mean" and model.backbone.cls_token is None
    x = torch.randn(2, 3, 16, 16)
    assert model(x).shape == (2, 10)
