"""Every joint-embedding loss computes in its input's precision: float64 in -> float64 out, equal
to the float32 result to float32 accuracy (the losses once called .float(), so float64 checks
silently ran in float32); half precision is computed in float32."""

import pytest
import torch

from selfsup.losses import (barlow_twins_loss, byol_loss, dino_loss, info_nce, negative_cosine,
                            nt_xent, sinkhorn, supcon, swav_loss, vicreg_loss)
from selfsup.losses.clustering import selfpatch_loss
from selfsup.losses.noncontrastive import feature_distillation_loss

g = torch.Generator().manual_seed(0)
A, B, C = (torch.randn(8, 6, generator=g) for _ in range(3))
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
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_keeps_float64(name):
    lo, hi = LOSSES[name](torch.float32), LOSSES[name](torch.float64)
    assert hi.dtype == torch.float64 and lo.dtype == torch.float32
    assert torch.allclose(hi.float(), lo, rtol=1e-4, atol=1e-5)
    assert LOSSES[name](torch.bfloat16).dtype == torch.float32
