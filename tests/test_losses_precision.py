"""Every joint-embedding loss computes in its input's precision: float64 in -> float64 out, equal
to the float32 result to float32 accuracy (the losses once called .float(), so float64 checks
silently ran in float32); half precision is computed in float32. The same holds for the
semi-supervised losses and FreeMatch's threshold state, which once ran in bfloat16 under autocast
and stalled (tau stuck at 0.25: with m = 0.999 the increment (1 - m) x is below half a bfloat16
step there, and 0.999 itself rounds to 1)."""

import pytest
import torch

from selfsup.losses import (barlow_twins_loss, byol_loss, dino_loss, info_nce, negative_cosine,
                            nt_xent, sinkhorn, supcon, swav_loss, vicreg_loss)
from selfsup.losses.clustering import selfpatch_loss
from selfsup.losses.noncontrastive import feature_distillation_loss
from selfsup.losses.semisup import (class_threshold_loss, fixmatch_loss, freematch_ema,
                                    freematch_fairness_loss, kd_loss, pseudo_label_loss,
                                    soft_target_loss, uda_loss)

g = torch.Generator().manual_seed(0)
A, B, C = (torch.randn(8, 6, generator=g) for _ in range(3))
W, S = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g)
LOSSES = {
    "nt_xent": lambda d: nt_xent(A.to(d), B.to(d), 0.5),
    "info_nce": lambda d: info_nce(A.to(d), B.to(d), C.to(d), 0.2),
    "supcon": lambda d: supcon(torch.stack([A, B], 1).to(d), torch.arange(8) % 3, 0.1),
    "negative_cosine": lambda d: negative_cosine(A.to(d), B.to(d)),
    "byol": lambda d: byol_loss(A.to(d), B.to(d)),
    "barlow_twins": lambda d: barlow_twins_loss(A.to(d), B.to(d)),
    "vicreg": lambda d: vicreg_loss(A.to(d), B.to(d))[0],
    "swav": lambda d: swav_loss([A.to(d), B.to(d)], [sinkhorn(B.to(d)), sinkhorn(A.to(d))], 0.1),
    "dino": lambda d: dino_loss([A.to(d), B.to(d)], [B.to(d)], torch.zeros(6, dtype=d), 0.1, 0.04),
    "selfpatch": lambda d: selfpatch_loss(A.to(d), B.to(d), torch.zeros(6, dtype=d), 0.1, 0.04),
    "feature_distillation": lambda d: feature_distillation_loss(A.to(d), B.to(d)),
    # semi-supervised: the logits autocast hands them
    "pseudo_label": lambda d: pseudo_label_loss(W.to(d), S.to(d), 0.5)[0],
    "fixmatch": lambda d: fixmatch_loss(W.to(d), S.to(d), 0.5)[0],
    "class_threshold": lambda d: class_threshold_loss(W.to(d), S.to(d), torch.full((10,), 0.5))[0],
    "kd": lambda d: kd_loss(S.to(d), W.to(d)),
    "soft_target": lambda d: soft_target_loss(S.to(d), W.softmax(1).to(d)),
    "uda": lambda d: uda_loss(W.to(d), S.to(d), 0.7, 0.6)[0],
    "freematch_fairness": lambda d: freematch_fairness_loss(
        S.to(d), torch.ones(16), torch.full((10,), 0.1), torch.full((10,), 0.1)),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_keeps_float64(name):
    lo, hi = LOSSES[name](torch.float32), LOSSES[name](torch.float64)
    assert hi.dtype == torch.float64 and lo.dtype == torch.float32
    assert torch.allclose(hi.float(), lo, rtol=1e-4, atol=1e-5)
    assert LOSSES[name](torch.bfloat16).dtype == torch.float32


def test_freematch_state_moves_under_bfloat16_probs_as_in_float32():
    gen = torch.Generator().manual_seed(1)
    state = {d: (torch.tensor(0.1), torch.full((10,), 0.1), torch.full((10,), 0.1))
             for d in ("fp32", "bf16")}
    for _ in range(2000):
        probs = (torch.randn(64, 10, generator=gen) * 4).softmax(1)
        state["fp32"] = freematch_ema(*state["fp32"], probs, 0.999)
        state["bf16"] = freematch_ema(*state["bf16"], probs.bfloat16(), 0.999)
    for a, b in zip(state["fp32"], state["bf16"]):
        assert b.dtype == torch.float32
        assert torch.allclose(a, b, atol=2e-3), (a, b)   # bf16 inputs: ~3 significant digits
    assert state["fp32"][0] > 0.5     # tau went well past the 0.25 where bfloat16 stalled
