"""The Wilson interval against published values (e.g. Newcombe 1998, Table I); McNemar's exact
test against hand-computed binomial tails and scipy."""

import pytest

from selfsup.evaluate.stats import mcnemar_exact, paired_outcomes, wilson_interval


@pytest.mark.parametrize("acc,n,lo,hi", [(0.5, 100, 0.4038, 0.5962), (0.0, 10, 0.0, 0.2775),
                                          (81 / 263, 263, 0.2553, 0.3662)])
def test_wilson_interval(acc, n, lo, hi):
    got = wilson_interval(acc, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)
    assert 0.0 <= got[0] <= acc <= got[1] <= 1.0


@pytest.mark.parametrize("b,c,p", [
    (1, 9, 2 * (1 + 10) / 2 ** 10),       # 2 P[X <= 1], X ~ Bin(10, 1/2) = 22/1024
    (0, 5, 2 / 2 ** 5),                    # 2 P[X = 0], X ~ Bin(5, 1/2)
    (3, 3, 1.0),                           # balanced: 2 P[X <= 3] > 1, capped
    (0, 0, 1.0),                           # no discordant pair: no evidence either way
    (2, 10, 2 * (1 + 12 + 66) / 2 ** 12),  # symmetric in its arguments
    (10, 2, 2 * (1 + 12 + 66) / 2 ** 12)])
def test_mcnemar_exact_hand_computed(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_matches_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(4, 17), (30, 45), (0, 1), (12, 12)]:
        want = stats.binomtest(b, b + c, 0.5).pvalue
        assert mcnemar_exact(b, c) == pytest.approx(want, rel=1e-9)


def test_paired_outcomes_counts_only_discordant_items():
    a = [True, True, False, False, True, False]
    b = [True, False, False, True, True, True]
    r = paired_outcomes(a, b)
    assert (r["only_a"], r["only_b"], r["n"]) == (1, 2, 6)
    assert r["rate_a"] == pytest.approx(0.5) and r["rate_b"] == pytest.approx(4 / 6)
    assert r["p_mcnemar"] == pytest.approx(mcnemar_exact(1, 2))
    with pytest.raises(ValueError, match="same length"):
        paired_outcomes(a, b[:-1])
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 3)
