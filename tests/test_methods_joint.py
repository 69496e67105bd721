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


def test_spherical_kmeans_reseeds_empty_clusters_and_separates_blobs():
    from selfsup.methods.deepcluster import spherical_kmeans
    g = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.eye(3, 8), dim=1)
    x = F.normalize(centers.repeat_interleave(20, 0) + 0.05 * torch.randn(60, 8, generator=g), dim=1)
    c, a = spherical_kmeans(x, 3, 10, g)
    assert sorted(torch.bincount(a, minlength=3).tolist()) == [20, 20, 20]
    # with 3 distinct points and 5 clusters, empty clusters are re-seeded (no NaN centroids)
    c, a = spherical_kmeans(x[[0, 20, 40]], 3, 5, g)
    assert torch.isfinite(c).all() and len(set(a.tolist())) == 3


def test_deepcluster_clusters_once_memory_is_refreshed():
    m = build("deepcluster_v2", hidden_dim=32, out_dim=16, n_prototypes=3, n_heads=2)
    m.setup(16)
    x = imgs(8)
    out = m.training_step(m.views(x), 0.0, BatchInfo(torch.arange(8), torch.full((8,), -1)))
    assert out.loss.item() == 0.0  # no pseudo-classes before the first clustering
    m.after_optimizer_step(0.0)
    assert int(m.clusterings) == 0 and (m.assignments == -1).all()
    m.training_step(m.views(x), 0.0, BatchInfo(torch.arange(8, 16), torch.full((8,), -1)))
    m.after_optimizer_step(0.0)
    assert int(m.clusterings) == 1 and (m.assignments >= 0).all() and not m.refreshed.any()
    assert torch.allclose(m.prototypes[0].weight.norm(dim=1), torch.ones(3), atol=1e-5)
    loss = m.training_step(m.views(x), 0.0, BatchInfo(torch.arange(8), torch.full((8,), -1))).loss
    assert loss.item() > 0


def test_swav_prototypes_frozen_then_trained_and_renormalised():
    m = build("swav", hidden_dim=32, out_dim=16, n_prototypes=5, n_local_crops=2,
              freeze_prototypes=0.1)
    m.training_step(m.views(imgs()), 0.05, batch()).loss.backward()
    assert m.prototypes.weight.grad is None
    m.training_step(m.views(imgs()), 0.5, batch()).loss.backward()
    assert m.prototypes.weight.grad is not None
    with torch.no_grad():
        m.prototypes.weight.mul_(3)
    m.after_optimizer_step(0.5)
    assert torch.allclose(m.prototypes.weight.norm(dim=1), torch.ones(5), atol=1e-5)


def test_dino_teacher_temperature_warmup_and_centre_update():
    m = build("dino", out_dim=32, hidden_dim=16, bottleneck_dim=8, n_local_crops=2)
    assert m.teacher_temp(0.0) == pytest.approx(0.04) and m.teacher_temp(0.15) == pytest.approx(0.055)
    assert m.teacher_temp(0.9) == pytest.approx(0.07)
    views = m.views(imgs())
    assert len(views) == 4 and views[2].shape[-1] < views[0].shape[-1]  # 2 global + 2 local
    m.training_step(views, 0.0, batch())
    t = torch.cat(m._teacher_out)
    m.after_optimizer_step(0.0)
    assert torch.allclose(m.center, 0.1 * t.mean(0), atol=1e-6)
    out = m.training_step(views, 0.0, batch())  # last layer frozen at the start
    out.loss.backward()
    assert m.head.last_layer.parametrizations.weight.original1.grad is None
