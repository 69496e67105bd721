"""Out-of-distribution scores against hand computations and naive loops."""

import math

import numpy as np
import torch

from selfsup.ood import auroc, energy_score, fpr_at_tpr, knn_k, knn_score, msp_score


def test_msp_and_energy_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    e = math.exp(2.0)
    assert torch.allclose(msp_score(logits), torch.tensor([1 - e / (e + 2), 1 - 1 / 3]))
    assert torch.allclose(energy_score(logits), torch.tensor([-math.log(e + 2), -math.log(3)]))
    # energy keeps the logits' scale: the same softmax at smaller logits is more unusual
    assert energy_score(logits * 0.1)[0] > energy_score(logits)[0]


def test_knn_score_is_the_kth_nearest_normalised_distance():
    rng = np.random.default_rng(0)
    bank, q = rng.normal(size=(12, 5)), rng.normal(size=(4, 5))
    nb = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    nq = q / np.linalg.norm(q, axis=1, keepdims=True)
    for k in (1, 3):
        want = [sorted(np.linalg.norm(v - b) for b in nb)[k - 1] for v in nq]
        got = knn_score(torch.tensor(q), torch.tensor(bank), k).numpy()
        assert np.allclose(got, want, atol=1e-6)
    assert knn_k(80) == 10 and knn_k(400) == 50 and knn_k(50_000) == 50 and knn_k(5) == 1


def test_auroc_and_false_alarms_at_95_percent_known_recall():
    known, unknown = np.arange(100.0), np.arange(100.0) + 50
    # naive: the share of (known, unknown) pairs ordered correctly, ties counting half
    pairs = (unknown[None, :] > known[:, None]).mean() + 0.5 * (
        unknown[None, :] == known[:, None]).mean()
    assert abs(auroc(known, unknown) - pairs) < 1e-12 and abs(pairs - 0.875) < 1e-12
    # threshold at the 95th percentile of the known scores (94.05): unknowns 50..94 pass -> 45%
    assert abs(fpr_at_tpr(known, unknown) - 0.45) < 1e-12
