import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import nt_xent


def nt_xent_naive(z1, z2, t):
    """SimCLR Eq. 1 with explicit loops over the 2N anchors and their 2N-1 candidates."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2]).double()]
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        num = math.exp(float(z[i] @ z[pos]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


@pytest.mark.parametrize("t", [0.05, 0.1, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("n,d", [(2, 3), (7, 16), (16, 5)])
def test_nt_xent_matches_naive_loop(t, n, d):
    g = torch.Generator().manual_seed(n * 100 + d)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert abs(nt_xent(z1, z2, t).item() - nt_xent_naive(z1, z2, t)) < 1e-6 * max(1, nt_xent_naive(z1, z2, t))


def test_nt_xent_identical_orthogonal_views_closed_form():
    # positives identical, all other pairs orthogonal: loss = -log(e^(1/t) / (e^(1/t) + 2N-2))
    n, t = 4, 0.5
    z = torch.eye(n, 8)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * n - 2))
    assert abs(nt_xent(z, z.clone(), t).item() - expected) < 1e-6


def test_nt_xent_scale_invariant_and_gradient():
    z1 = torch.randn(5, 4, requires_grad=True)
    z2 = torch.randn(5, 4)
    a = nt_xent(z1, z2, 0.2)
    b = nt_xent(z1 * 3.0, z2 * 0.5, 0.2)
    assert torch.allclose(a, b, atol=1e-6)
    a.backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(3, 2), torch.randn(3, 2), 0.0)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        nt_xent(torch.randn(3, 2), torch.randn(4, 2))
