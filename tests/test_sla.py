"""SLA (Lee et al., 2020): joint labels, single and aggregated inference index the right blocks,
transformations are exact, every mode trains, and a trained SLA model round-trips."""

import json

import pytest
import torch
import torch.nn.functional as F

from selfsup import backbones
from selfsup.config import load_config
from selfsup.losses.semisup import kd_loss
from selfsup.losses.sla import (aggregated_logits, joint_labels, single_logits, sla_loss,
                                sla_sd_loss, transformation_logits)
from selfsup.methods import BatchInfo
from selfsup.semisup.sla import (MODES, SLA, TRANSFORMS, SLAClassifier, SLAConfig,
                                 all_transforms, apply_transform)


def test_joint_labels_are_y_times_m_plus_k_transformation_major():
    y = torch.tensor([2, 0, 1])
    assert joint_labels(y, 4).tolist() == [8, 0, 4, 9, 1, 5, 10, 2, 6, 11, 3, 7]


def coded_logits(b, n, m):
    """joint_all[k*b + i, y*m + j] = 1000 k + 100 y + 10 j + i: every entry names its block."""
    k = torch.arange(m).view(m, 1, 1, 1)
    i = torch.arange(b).view(1, b, 1, 1)
    y = torch.arange(n).view(1, 1, n, 1)
    j = torch.arange(m).view(1, 1, 1, m)
    return (1000 * k + 100 * y + 10 * j + i).float().reshape(m * b, n * m)


def test_single_and_aggregated_inference_index_the_right_blocks():
    b, n, m = 3, 5, 4
    joint_all = coded_logits(b, n, m)
    single = single_logits(joint_all[:b], m)   # untransformed copies, k = 0 block
    assert torch.equal(single, (100 * torch.arange(n).view(1, n) + torch.arange(b).view(b, 1)).float())
    # naive loop: copy k of image i, restricted to the columns of transformation k
    ref = torch.zeros(b, n)
    for i in range(b):
        for y in range(n):
            ref[i, y] = sum(joint_all[k * b + i, y * m + k] for k in range(m)) / m
    assert torch.allclose(aggregated_logits(joint_all, m), ref)
    # ... which is 1000 * mean(k) + 100 y + 10 * mean(k) + i with the codes above
    assert torch.allclose(ref[1, 2], torch.tensor(1000 * 1.5 + 200 + 15 + 1))


def test_transformation_logits_marginalise_over_classes():
    joint = torch.randn(6, 5 * 4)
    ref = torch.stack([torch.logsumexp(joint[:, k::4], 1) for k in range(4)], 1)
    assert torch.allclose(transformation_logits(joint, 4), ref, atol=1e-6)


def test_losses_match_their_formulas():
    torch.manual_seed(0)
    b, n, m = 4, 3, 4
    joint_all, single = torch.randn(m * b, n * m), torch.randn(b, n)
    y = torch.tensor([0, 2, 1, 2])
    ce = -sum(F.log_softmax(joint_all[k * b + i], 0)[y[i] * m + k]
              for k in range(m) for i in range(b)) / (m * b)
    assert torch.allclose(sla_loss(joint_all, y, m), ce, atol=1e-6)
    total, parts = sla_sd_loss(joint_all, single, y, m, temperature=2.0)
    expected = ce + F.cross_entropy(single, y) + kd_loss(single, aggregated_logits(joint_all, m), 2.0)
    assert torch.allclose(total, expected, atol=1e-6)
    assert set(parts) == {"joint", "single", "distill"}


@pytest.mark.parametrize("kind", sorted(TRANSFORMS))
def test_transformations_are_exact_and_distinct(kind):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    m = TRANSFORMS[kind]
    outs = [apply_transform(x, k, kind) for k in range(m)]
    assert torch.equal(outs[0], x)                                   # t_0 is the identity
    assert len({tuple(o.flatten().tolist()) for o in outs}) == m     # all different
    xa = all_transforms(x, kind)
    assert xa.shape == (m * 2, 3, 8, 8) and torch.equal(xa[2:4], outs[1])


def test_rotation_and_colour_permutation_by_hand():
    from selfsup.augment.views import normalize

    raw = torch.rand(1, 3, 4, 4)
    x = normalize(raw)
    # rotation by 90 degrees without interpolation: undone exactly by rotating back
    assert torch.equal(torch.rot90(apply_transform(x, 1, "rotation"), -1, dims=(2, 3)), x)
    assert torch.equal(apply_transform(x, 1, "rotation2"), torch.rot90(x, 2, dims=(2, 3)))
    # colour permutation k = 5 is (2, 1, 0): the raw RGB channels reversed, then normalised
    assert torch.allclose(apply_transform(x, 5, "color_perm"), normalize(raw[:, [2, 1, 0]]), atol=1e-6)
    # combined: k = r * 6 + c
    both = apply_transform(x, 1 * 6 + 5, "rot_color_perm")
    assert torch.allclose(both, torch.rot90(normalize(raw[:, [2, 1, 0]]), 1, dims=(2, 3)), atol=1e-6)


def test_classifier_inference_equals_a_naive_loop():
    torch.manual_seed(0)
    net = SLAClassifier(backbones.create("convnet", width=0.25), 3, "sla", "rotation").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        per_k = [net.joint(net.backbone(torch.rot90(x, k, dims=(2, 3))))[:, k::4] for k in range(4)]
        assert torch.allclose(net(x), torch.stack(per_k).mean(0), atol=1e-5)
        net.inference = "joint_single"
        assert torch.allclose(net(x), per_k[0], atol=1e-5)
    with pytest.raises(ValueError, match="no N-way head"):
        SLAClassifier(backbones.create("convnet", width=0.25), 3, "sla", inference="head")
    with pytest.raises(ValueError, match="joint head"):
        SLAClassifier(backbones.create("convnet", width=0.25), 3, "da", inference="aggregated")


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_trains_with_and_without_unlabeled_images(mode):
    torch.manual_seed(0)
    uw = 0.0 if mode in ("baseline", "da") else 0.5
    method = SLA(backbones.create("convnet", width=0.25),
                 SLAConfig(num_classes=3, mode=mode, uratio=1.0, unlabeled_weight=uw))
    assert method.uratio == (1.0 if uw else 0.0)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    batch = BatchInfo(torch.arange(8), torch.tensor([0, 1, 2, 0, -1, -1, -1, -1]))
    out = method.training_step(method.views(images, batch), 0.3, batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert ("loss_unlabeled" in out.logs) == (uw > 0)
    heads = [h for h in (method.model.joint, method.model.fc, method.model.aux) if h is not None]
    assert all(h.weight.grad is not None for h in heads)
    assert method.predict_logits(method.views(images, batch)[0]).shape == (8, 3)


def test_unlabeled_loss_needs_a_transformation_head():
    with pytest.raises(ValueError, match="transformation head"):
        SLA(backbones.create("convnet", width=0.25), SLAConfig(mode="da", unlabeled_weight=1.0))


def test_sla_digits_end_to_end_saves_a_model_that_reloads(tmp_path):
    from selfsup.semisupervised import load_classifier, train_semisup

    cfg = load_config("fixmatch_digits", ["method.name=sla", "method.mode=sla_sd",
                                          "method.transform=color_perm", "train.steps=6",
                                          "train.eval_every=3", "train.progress=false"])
    run, summary = train_semisup(cfg, tmp_path / "sla")
    assert summary["evaluations"] == 2 and 0 <= summary["test_acc_final"] <= 1
    model, meta = load_classifier(run)
    assert isinstance(model, SLAClassifier) and meta["sla_mode"] == "sla_sd"
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)]
    x = torch.randn(4, 3, 16, 16)
    model.inference = "aggregated"   # the joint head was saved too
    assert model(x).shape == (4, 10)
