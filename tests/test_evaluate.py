import math

import numpy as np
import torch

from selfsup.evaluate import (collapse_metrics, effective_rank, embedding_std, knn_predict,
                              linear_probe)


def knn_naive(train, ytr, test, c, k, t):
    out = []
    for q in test:
        sims = [float(np.dot(q, x) / np.linalg.norm(q) / np.linalg.norm(x)) for x in train]
        order = np.argsort(sims)[::-1][:k]
        votes = np.zeros(c)
        for j in order:
            votes[ytr[j]] += math.exp(sims[j] / t)
        out.append(votes)
    return np.array(out)


def test_knn_matches_naive_votes():
    rng = np.random.default_rng(0)
    tr, te = rng.normal(size=(40, 6)), rng.normal(size=(9, 6))
    y = rng.integers(0, 3, 40)
    for k, t in ((5, 0.1), (20, 0.5), (200, 0.07)):
        got = knn_predict(tr, y, te, 3, k, t, chunk=4)
        assert np.allclose(got, knn_naive(tr, y, te, 3, min(k, 40), t), rtol=1e-4)


def test_linear_probe_learns_separable_data_and_picks_c():
    rng = np.random.default_rng(1)
    means = rng.normal(size=(4, 10)) * 3
    y = np.repeat(np.arange(4), 50)
    x = means[y] + rng.normal(size=(200, 10))
    yt = np.repeat(np.arange(4), 20)
    xt = means[yt] + rng.normal(size=(80, 10))
    res = linear_probe(x, y, xt, yt, seed=0)
    assert res["linear_acc"] > 0.9 and res["linear_val_acc"] > 0.9 and res["linear_C"] > 0
    noise = linear_probe(rng.normal(size=(200, 10)), y, xt, yt)
    assert noise["linear_acc"] < 0.5


def test_collapse_metrics():
    z = torch.randn(4096, 64)
    assert abs(embedding_std(z) - 1 / 8) < 0.01
    assert effective_rank(z) > 55
    collapsed = torch.ones(100, 64) + 1e-9 * torch.randn(100, 64)
    assert embedding_std(collapsed) < 1e-6 and effective_rank(collapsed) < 1.01
    line = torch.randn(100, 1) * torch.randn(1, 64)
    assert effective_rank(line) < 1.01
    m = collapse_metrics(z)
    assert m["embed_std_healthy"] == 1 / 8


def test_collapse_detector_warns_once():
    from selfsup.evaluate.collapse import CollapseDetector
    det = CollapseDetector(std_ratio=0.1, min_rank=1.5)
    healthy = {"z_std": 0.05, "z_std_healthy": 0.0625, "z_rank": 20.0}
    assert det.check(10, healthy) is None and det.event is None
    msg = det.check(20, {"z_std": 0.001, "z_std_healthy": 0.0625, "z_rank": 3.0})
    assert "collapsed at step 20" in msg and det.event["step"] == 20
    assert det.check(30, {"z_std": 0.0, "z_std_healthy": 0.0625, "z_rank": 1.0}) is None
    assert CollapseDetector().check(5, {"z_std": 0.05, "z_std_healthy": 0.0625, "z_rank": 1.2})


def test_collapse_detector_flags_dimensional_collapse():
    """Embeddings in a few directions of a 512-d space (SimSiam without stop-gradient on the CPU
    protocol: rank ~3-4, std half the healthy value) are flagged; a rank of 7 in 128-d (SupCon's
    class clusters) is not."""
    import math

    import torch

    from selfsup.evaluate.collapse import CollapseDetector, collapse_metrics

    g = torch.Generator().manual_seed(0)
    few = torch.randn(256, 3, generator=g) @ torch.randn(3, 512, generator=g)
    m = collapse_metrics(few)
    assert m["effective_rank"] < 5 and m["embed_std"] > 0.1 * m["embed_std_healthy"]
    det = CollapseDetector()
    warning = det.check(195, {"z_std": m["embed_std"], "z_std_healthy": m["embed_std_healthy"],
                              "z_rank": m["effective_rank"]})
    assert warning and det.event["reason"] == "effective rank" and det.event["step"] == 195
    assert CollapseDetector().check(1, {"z_std": 0.03, "z_std_healthy": 1 / math.sqrt(128),
                                        "z_rank": 7.0}) is None
