"""The Wilson interval against published values (e.g. Newcombe 1998, Table I)."""

import pytest

from selfsup.evaluate.stats import wilson_interval


@pytest.mark.parametrize("acc,n,lo,hi", [(0.5, 100, 0.4038, 0.5962), (0.0, 10, 0.0, 0.2775),
                                          (81 / 263, 263, 0.2553, 0.3662)])
def test_wilson_interval(acc, n, lo, hi):
    got = wilson_interval(acc, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)
    assert 0.0 <= got[0] <= acc <= got[1] <= 1.0
