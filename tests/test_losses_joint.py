"""Joint-embedding losses against per-sample loops over the papers' equations (float64)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import (barlow_twins_loss, byol_loss, dino_center, dino_loss, info_nce,
                            negative_cosine, nt_xent, sinkhorn, supcon, swav_loss, vicreg_loss)
from selfsup.nn.ema import cosine_momentum, ema_update, frozen_copy
from selfsup.nn.queue import MemoryQueue


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def close(a, b, tol=1e-6):
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_info_nce_naive(t):
    q, k, neg = rand(5, 8, seed=1), rand(5, 8, seed=2), rand(11, 8, seed=3)
    total = 0.0
    for i in range(5):
        qi = unit(q[i])
        pos = math.exp(qi @ unit(k[i]) / t)
        negs = sum(math.exp(qi @ unit(n) / t) for n in neg)
        total += -math.log(pos / (pos + negs))
    assert close(info_nce(q, k, neg, t), total / 5)


@pytest.mark.parametrize("with_labels", [True, False])
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_supcon_naive(with_labels, t):
    n, v, d = 6, 2, 5
    f = rand(n, v, d, seed=4)
    labels = torch.tensor([0, 1, 0, 2, 1, 0]) if with_labels else None
    z = [unit(f[i, j]) for j in range(v) for i in range(n)]           # view-major order
    ids = [int(labels[i]) if with_labels else i for j in range(v) for i in range(n)]
    total = 0.0
    for a in range(n * v):
        den = sum(math.exp(z[a] @ z[o] / t) for o in range(n * v) if o != a)
        pos = [p for p in range(n * v) if p != a and ids[p] == ids[a]]
        total += -sum(math.log(math.exp(z[a] @ z[p] / t) / den) for p in pos) / len(pos)
    expected = (t / 0.07) * total / (n * v)
    assert close(supcon(f, labels, t, 0.07), expected)


def test_supcon_without_labels_is_nt_xent():
    f = rand(7, 2, 4, seed=5)
    assert close(supcon(f, None, 0.3, base_temperature=0.3), nt_xent(f[:, 0], f[:, 1], 0.3))


def test_byol_and_simsiam_naive():
    p, z = rand(6, 5, seed=6), rand(6, 5, seed=7)
    cos = [unit(p[i]) @ unit(z[i]) for i in range(6)]
    assert close(byol_loss(p, z), np.mean([np.sum((unit(p[i]) - unit(z[i])) ** 2) for i in range(6)]))
    assert close(byol_loss(p, z), np.mean([2 - 2 * c for c in cos]))
    assert close(negative_cosine(p, z), -np.mean(cos))


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_twins_naive(lambd):
    n, d = 9, 4
    z1, z2 = rand(n, d, seed=8).double().numpy(), rand(n, d, seed=9).double().numpy()

    def std(z):
        return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)

    a, b = std(z1), std(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c ** 2
    assert close(barlow_twins_loss(torch.tensor(z1), torch.tensor(z2), lambd), loss)


def test_vicreg_naive():
    n, d = 8, 3
    z1, z2 = rand(n, d, seed=10).double().numpy(), rand(n, d, seed=11).double().numpy() * 0.3
    inv = np.mean([(z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)])

    def var(z):
        return np.mean([max(0.0, 1 - math.sqrt(np.var(z[:, j], ddof=1) + 1e-4)) for j in range(d)])

    def cov(z):
        zc = z - z.mean(0)
        return sum((zc[:, i] @ zc[:, j] / (n - 1)) ** 2 for i in range(d) for j in range(d)
                   if i != j) / d

    expected = 25 * inv + 25 * (var(z1) + var(z2)) / 2 + 1 * (cov(z1) + cov(z2))
    loss, terms = vicreg_loss(torch.tensor(z1), torch.tensor(z2))
    assert close(loss, expected) and close(terms["invariance"], inv)


def sinkhorn_naive(scores, eps, iters):
    q = np.exp(np.asarray(scores, np.float64) / eps).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        for r in range(k):
            q[r] /= q[r].sum() * k
        for c in range(b):
            q[:, c] /= q[:, c].sum() * b
    return (q * b).T


def test_sinkhorn_matches_algorithm_and_marginals():
    s = rand(12, 5, seed=12) * 0.1
    q = sinkhorn(s, 0.05, 3)
    assert np.allclose(q.numpy(), sinkhorn_naive(s, 0.05, 3), atol=1e-6)
    assert torch.allclose(q.sum(1), torch.ones(12), atol=1e-6)          # each sample: a distribution
    q = sinkhorn(s, 0.05, 200)
    assert torch.allclose(q.sum(0), torch.full((5,), 12 / 5), atol=1e-4)  # equal partition


def test_swav_loss_naive():
    b, k, t = 4, 6, 0.1
    scores = [rand(b, k, seed=s) for s in (13, 14, 15)]  # 2 global + 1 local crop
    codes = [sinkhorn(scores[0]), sinkhorn(scores[1])]
    total, pairs = 0.0, 0
    for i in range(2):
        for j in range(3):
            if j != i:
                for n in range(b):
                    p = F.softmax(scores[j][n].double() / t, 0)
                    total += -float((codes[i][n].double() * p.log()).sum()) / b
                pairs += 1
    assert close(swav_loss(scores, codes, t), total / pairs)


def test_dino_loss_and_center_naive():
    b, k = 3, 5
    student = [rand(b, k, seed=s) for s in (16, 17, 18, 19)]
    teacher = [rand(b, k, seed=s) for s in (20, 21)]
    center = rand(k, seed=22) * 0.1
    total, pairs = 0.0, 0
    for i in range(2):
        for j in range(4):
            if i == j:
                continue
            for n in range(b):
                tgt = F.softmax((teacher[i][n].double() - center.double()) / 0.04, 0)
                total += -float((tgt * F.log_softmax(student[j][n].double() / 0.1, 0)).sum()) / b
            pairs += 1
    assert close(dino_loss(student, teacher, center, 0.1, 0.04), total / pairs)
    new = dino_center(center, teacher, 0.9)
    expected = 0.9 * center + 0.1 * torch.cat(teacher).mean(0)
    assert torch.allclose(new, expected, atol=1e-7)


def test_queue_fifo_contents_after_pushes():
    q = MemoryQueue(5, 2, normalize=False)
    q.push(torch.tensor([[1.0, 1], [2, 2]]))
    q.push(torch.tensor([[3.0, 3], [4, 4]]))
    q.push(torch.tensor([[5.0, 5], [6, 6]]))  # wraps: 6 overwrites the oldest (1)
    assert q.items[:, 0].tolist() == [6, 2, 3, 4, 5] and int(q.ptr) == 1
    with pytest.raises(ValueError):
        q.push(torch.zeros(6, 2))


def test_ema_update_and_cosine_momentum():
    online = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    target = frozen_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
        online[1].running_mean.fill_(3.0)
    ema_update(target, online, 0.9)
    for b, t, o in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)
    assert torch.equal(target[1].running_mean, online[1].running_mean)
    assert cosine_momentum(0.0) == pytest.approx(0.996) and cosine_momentum(1.0) == 1.0
    assert cosine_momentum(0.5) == pytest.approx(0.998)


def test_dino_target_diagnostics_tell_the_two_collapse_modes_apart():
    from selfsup.losses.clustering import target_diagnostics

    k, b = 16, 8
    center = torch.zeros(k)
    uniform = target_diagnostics(torch.zeros(b, k), center, 0.04)       # centring won
    assert uniform["target_entropy"] == pytest.approx(1.0) and uniform["batch_entropy"] == \
        pytest.approx(1.0) and uniform["logit_spread"] == 0.0
    same = torch.zeros(b, k)
    same[:, 3] = 1.0                                                    # sharpening won
    one = target_diagnostics(same, center, 0.04)
    assert one["target_entropy"] < 0.01 and one["batch_entropy"] < 0.01
    healthy = torch.eye(k)[:b]                                          # sharp, and different
    h = target_diagnostics(healthy, center, 0.04)
    assert h["target_entropy"] < 0.01
    assert h["batch_entropy"] == pytest.approx(math.log(b) / math.log(k), abs=0.01)
    assert h["logit_spread"] > 1
