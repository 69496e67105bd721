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


def test_supcon_ce_control_differs_only_in_the_loss():
    """loss=ce: the same encoder and the same two views; a linear classifier with cross-entropy
    on each view (unlabeled images skipped) instead of the head and the contrastive loss."""
    m = build("supcon", loss="ce", num_classes=3)
    ref = build("supcon")
    assert isinstance(m.head, torch.nn.Linear) and m.head.out_features == 3
    assert all(torch.equal(p, q) for p, q in zip(m.backbone.parameters(), ref.backbone.parameters()))
    views = m.views(imgs(4))
    labels = [0, 2, -1, 1]
    out = m.training_step(views, 0.0, batch(4, labels))
    logits = m.head(m.backbone(torch.cat(views)))
    y = torch.tensor(labels * 2)
    keep = y >= 0
    expected = -torch.log_softmax(logits, 1)[keep, y[keep]].mean()
    assert torch.isclose(out.loss, expected, atol=1e-5)
    none = m.training_step(views, 0.0, batch(4, [-1, -1, -1, -1])).loss
    assert none.item() == 0.0
    with pytest.raises(ValueError, match="num_classes"):
        m.training_step(views, 0.0, batch(4, [0, 1, 2, 3]))
    with pytest.raises(ValueError, match="supcon or ce"):
        build("supcon", loss="hinge")


def test_spherical_kmeans_separates_blobs_and_keeps_empty_centroids():
    from selfsup.methods.deepcluster import spherical_kmeans
    g = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.eye(3, 8), dim=1)
    x = F.normalize(centers.repeat_interleave(20, 0) + 0.05 * torch.randn(60, 8, generator=g), dim=1)
    c, a = spherical_kmeans(x, 3, 10, g)
    assert sorted(torch.bincount(a, minlength=3).tolist()) == [20, 20, 20]
    # two identical points and one other, 3 clusters: one starts empty and keeps its initial
    # centroid (the official M step updates only non-empty clusters); nothing becomes NaN
    pts = x[[0, 0, 40]]
    c, a = spherical_kmeans(pts, 3, 5, g)
    assert torch.isfinite(c).all() and torch.allclose(c.norm(dim=1), torch.ones(3))
    assert len(set(a.tolist())) == 2


def test_deepcluster_init_memory_clusters_before_the_first_step_then_every_epoch():
    """swav's main_deepclusterv2: the memory is filled by a forward pass before training and
    k-means runs at the start of every epoch, whatever was refreshed (the bug: clustering only
    once every slot had been refreshed, which the dropped last batch never allowed)."""
    m = build("deepcluster_v2", hidden_dim=32, out_dim=16, n_prototypes=3, n_heads=2)
    m.setup(20)                       # 20 images, batches of 8: 2 steps an epoch, 4 dropped
    x = imgs(20)
    perm = torch.randperm(20)
    m.init_memory([(perm[:8], x[perm[:8]]), (perm[8:16], x[perm[8:16]])], steps_per_epoch=2)
    assert int(m.clusterings) == 1
    assert (m.assignments[:, perm[:16]] >= 0).all() and (m.assignments[:, perm[16:]] == -1).all()
    assert torch.allclose(m.prototypes[0].weight.norm(dim=1), torch.ones(3), atol=1e-5)
    batch = BatchInfo(perm[:8], torch.full((8,), -1))
    assert m.training_step(m.views(x[perm[:8]]), 0.0, batch).loss.item() > 0   # step 1 learns
    m.after_optimizer_step(0.0)
    assert int(m.clusterings) == 1
    m.training_step(m.views(x[perm[8:16]]), 0.1, BatchInfo(perm[8:16], torch.full((8,), -1)))
    m.after_optimizer_step(0.1)
    assert int(m.clusterings) == 2 and not m.refreshed.any()   # the next epoch starts


def test_deepcluster_clusters_every_epoch_in_a_real_run(tmp_path):
    """Counted through the loop on real images: 1 + steps / steps-per-epoch clusterings (the
    last batch of every epoch dropped), and the loss is never zero."""
    import json

    from selfsup.config import load_config
    from selfsup.pretrain import pretrain

    cfg = load_config(None, ["method.name=deepcluster_v2", "method.hidden_dim=32",
                             "method.out_dim=16", "method.n_prototypes=10", "method.n_heads=2",
                             "model.backbone=convnet", "model.width=0.25", "data.image_size=16",
                             "augment.size=16", "data.subset=100", "train.batch_size=32",
                             "train.steps=9", "train.log_every=1", "train.progress=false",
                             "eval.monitor=false"])
    run, summary = pretrain(cfg, tmp_path / "run")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    # 100 images, batch 32: 3 steps an epoch (4 images dropped); clusterings before steps 1, 4, 7
    assert [r["clusterings"] for r in train] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert all(r["loss"] > 0 for r in train)
    assert all(r["assigned"] >= 0.8 for r in train) and train[0]["clusters_used"] >= 2


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


def test_labeled_only_pretraining_keeps_just_the_labeled_images(tmp_path):
    """data.labels_per_class + data.labeled_only: the run trains on those N per class only (the
    matched SupCon / cross-entropy rows of the protocol)."""
    import json

    from selfsup.config import load_config
    from selfsup.pretrain import pretrain

    cfg = load_config("supcon_cifar10_cpu", [
        "data.dataset=digits", "data.image_size=16", "augment.size=16", "data.test_split=",
        "model.width=0.25", "train.steps=2", "train.batch_size=8", "train.progress=false",
        "eval.monitor=false", "data.labels_per_class=3", "data.labeled_only=true",
        "method.loss=ce"])
    run, _ = pretrain(cfg, tmp_path / "ce")
    names = json.loads((run / "splits.json").read_text())["train_names"]
    assert len(names) == 30
