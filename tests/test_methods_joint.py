"""Method-specific behaviour of the joint-embedding family (the contract test covers the rest)."""

import pytest
import torch
import torch.nn.functional as F

from selfsup import backbones
from selfsup.augment import ViewConfig
from selfsup.losses import supcon
from selfsup.methods import METHODS, BatchInfo
from selfsup.methods.mocov2 import _forward_in_groups
from selfsup.nn.ema import cosine_momentum


def build(name, **cfg):
    torch.manual_seed(0)
    cls = METHODS.get(name)
    m = cls(backbones.create("convnet", width=0.25), cls.Config(**cfg), ViewConfig(size=16))
    return m.train()


def imgs(n=8):
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(1))


def batch(n=8, labels=None):
    return BatchInfo(torch.arange(n), torch.tensor(labels) if labels else torch.full((n,), -1))


def test_moco_queue_holds_this_batchs_keys_after_the_update():
    m = build("mocov2", queue_size=20, bn_splits=2)
    m.training_step(m.views(imgs()), 0.0, batch())
    keys = m._last_keys.clone()
    assert torch.allclose(keys.norm(dim=1), torch.ones(8), atol=1e-5)
    m.after_optimizer_step(0.0)
    assert torch.equal(m.queue.items[:8], keys) and int(m.queue.ptr) == 8
    m.training_step(m.views(imgs()), 0.0, batch())
    keys2 = m._last_keys.clone()
    m.after_optimizer_step(0.0)
    assert torch.equal(m.queue.items[8:16], keys2) and torch.equal(m.queue.items[:8], keys)


def test_moco_shuffled_bn_uses_separate_statistics_per_group():
    bn = torch.nn.BatchNorm1d(3)
    x = torch.randn(8, 3)
    grouped = _forward_in_groups(bn, x, 2)
    assert torch.allclose(grouped[:4], F.batch_norm(x[:4], None, None, training=True), atol=1e-5)
    assert not torch.allclose(grouped, bn(x), atol=1e-3)
    with pytest.raises(ValueError, match="bn_splits"):
        _forward_in_groups(bn, torch.randn(6, 3), 4)


def test_simsiam_stop_gradient_switch():
    grads = {}
    for sg in (True, False):
        m = build("simsiam", proj_dim=32, pred_hidden_dim=8, stop_gradient=sg)
        m.training_step(m.views(imgs()), 0.0, batch()).loss.backward()
        grads[sg] = torch.cat([p.grad.flatten() for p in m.projector.parameters()])
    assert not torch.allclose(grads[True], grads[False])


def test_byol_target_follows_cosine_momentum():
    m = build("byol", hidden_dim=32, out_dim=16)
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.1)
    target_before = [p.clone() for p in m.target_backbone.parameters()]
    m.after_optimizer_step(0.3)
    tau = cosine_momentum(0.3, 0.996)
    for tb, t, o in zip(target_before, m.target_backbone.parameters(), m.backbone.parameters()):
        assert torch.allclose(t, tau * tb + (1 - tau) * o, atol=1e-7)


def test_supcon_uses_labels_and_treats_unlabeled_as_own_class():
    m = build("supcon")
    views = m.views(imgs())
    torch.manual_seed(0)
    a = m.training_step(views, 0.0, batch(labels=[0, 0, 0, 0, 1, 1, 1, 1])).loss
    torch.manual_seed(0)
    b = m.training_step(views, 0.0, batch()).loss  # all unlabeled: SimCLR-like
    assert not torch.isclose(a, b)
    with pytest.raises(ValueError, match="needs labels"):
        m.training_step(views, 0.0, None)
    f = torch.randn(4, 2, 5)
    assert torch.isclose(supcon(f, torch.tensor([5, 6, 7, 8])), supcon(f, None))
