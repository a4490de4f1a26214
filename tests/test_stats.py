"""Causal effect, bootstrap interval and paired tests against hand-computed numbers."""
import numpy as np
import pytest

from safety_neurons.method.stats import bootstrap_causal_effect, causal_effect, mcnemar_exact, paired_test


def test_causal_effect_by_hand():
    assert causal_effect(0.6, 0.2, 1.0) == pytest.approx(0.5)  # 0.4 / 0.8
    assert causal_effect(0.1, 0.2, 1.0) == pytest.approx(-0.125)  # patching made it less safe
    assert causal_effect(1.0, 0.2, 1.0) == pytest.approx(1.0)
    assert causal_effect(0.5, 0.5, 0.0) == pytest.approx(0.0)  # works whichever way round
    with pytest.raises(ValueError, match=r"F\(M2\) == F\(M1\) == 0.3.*undefined"):
        causal_effect(0.5, 0.3, 0.3)


def test_bootstrap_point_estimate_interval_and_unpacking():
    patched, m1, m2 = [1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]
    res = bootstrap_causal_effect(patched, m1, m2, n_boot=500, seed=1)
    c, lo, hi = res
    assert c == pytest.approx(0.75)  # mean(patched) = 0.75 and the denominator is 1 in every resample
    assert 0.0 <= lo <= c <= hi <= 1.0 and lo < hi
    assert res.n_skipped == 0 and res.n_boot == 500
    # a resample's C is mean(patched resample): its quantiles are multiples of 1/4
    assert lo * 4 == pytest.approx(round(lo * 4)) and hi * 4 == pytest.approx(round(hi * 4))
    assert tuple(bootstrap_causal_effect(patched, m1, m2, n_boot=500, seed=1)) == (c, lo, hi)


def test_bootstrap_skips_resamples_with_no_difference_between_m1_and_m2():
    # only prompt 0 separates M1 from M2: a resample without it has F(M2) == F(M1)
    res = bootstrap_causal_effect([1, 0, 0], [0, 0, 0], [1, 0, 0], n_boot=4000, seed=0)
    assert res.c == 1.0 and res.lo == 1.0 and res.hi == 1.0  # every usable resample gives C = 1
    assert res.n_skipped / 4000 == pytest.approx((2 / 3) ** 3, abs=0.03)  # P(prompt 0 never drawn)


def test_bootstrap_resamples_prompts_jointly():
    # patched equals M2 on every prompt: C is exactly 1 in every resample only if arms stay paired
    rng = np.random.default_rng(0)
    m1 = rng.random(30)
    m2 = m1 + rng.random(30)
    res = bootstrap_causal_effect(m2, m1, m2, n_boot=300)
    assert res.lo == pytest.approx(1.0) and res.hi == pytest.approx(1.0)


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="s_patched=3, s_m1=2, s_m2=3"):
        bootstrap_causal_effect([1, 0, 1], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="undefined"):
        bootstrap_causal_effect([1, 0], [1, 0], [0, 1])


def test_paired_test_exact_by_hand():
    # d = (1, 2, 3): |sum| over the 8 sign patterns is 6, 4, 2, 0, 0, 2, 4, 6; observed 6 -> p = 2/8
    assert paired_test([1, 2, 3], [0, 0, 0]) == pytest.approx(0.25)
    # zero differences are dropped: d = (1, 1, 1, 0) -> patterns of (1, 1, 1): |sum| = 3 twice in 8
    assert paired_test([1, 1, 1, 0], [0, 0, 0, 0]) == pytest.approx(0.25)
    # must reject: ten prompts all safer by one -> only the two all-same patterns reach 10: p = 2/1024
    assert paired_test(np.ones(10), np.zeros(10)) == pytest.approx(2 / 1024)
    # must not reject: differences cancel exactly -> every pattern is as extreme: p = 1
    assert paired_test([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert paired_test([0.3, 0.2], [0.3, 0.2]) == 1.0


def test_paired_test_monte_carlo_rejects_and_does_not_reject():
    n = 40  # above the exact-enumeration limit
    assert paired_test(np.ones(n), np.zeros(n), n_perm=2000) == pytest.approx(1 / 2001)
    alternating = np.where(np.arange(n) % 2 == 0, 1.0, 0.0)
    assert paired_test(alternating, 1 - alternating, n_perm=2000) == pytest.approx(1.0)


def test_paired_test_monte_carlo_agrees_with_exact_enumeration():
    rng = np.random.default_rng(3)
    d = rng.normal(0.4, 1.0, size=17)
    signs = 1 - 2 * ((np.arange(2**17)[:, None] >> np.arange(17)) & 1)
    exact = np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12)
    assert 0.01 < exact < 0.9  # a case where Monte Carlo error is visible
    assert paired_test(d, np.zeros(17), n_perm=20000, seed=1) == pytest.approx(exact, abs=0.01)
    assert paired_test(d, np.zeros(17), seed=5) == paired_test(d, np.zeros(17), seed=5)


def test_mcnemar_exact_by_hand():
    # 8 prompts safe only under A, none only under B: p = 2 * (1/2)^8
    a = [1] * 8 + [1, 0]
    b = [0] * 8 + [1, 0]
    assert mcnemar_exact(a, b) == pytest.approx(0.0078125)
    # 5 vs 3 discordant: p = 2 * (C(8,0)+C(8,1)+C(8,2)+C(8,3)) / 256 = 2 * 93 / 256
    a = [1] * 5 + [0] * 3
    b = [0] * 5 + [1] * 3
    assert mcnemar_exact(a, b) == pytest.approx(0.7265625)
    assert mcnemar_exact([1, 0], [1, 0]) == 1.0
    with pytest.raises(ValueError, match="binary"):
        mcnemar_exact([0.5, 1], [0, 1])
