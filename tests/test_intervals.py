"""Wilson, BCa, paired BCa and t intervals against statsmodels and scipy on fixed data, their coverage,
and their edge cases (n = 0, n = 1, all-true, all-false, constant values)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

import advprior.analysis.intervals as intervals
from advprior.analysis.intervals import (
    Interval,
    bca_interval,
    paired_difference,
    rate_interval,
    ratio,
    t_interval,
    wilson_interval,
)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.01])
def test_wilson_equals_statsmodels_and_scipy(alpha):
    for n in (1, 2, 9, 30, 450):
        k = np.arange(n + 1)
        p, lo, hi = wilson_interval(k, n, alpha)
        ref_lo, ref_hi = proportion_confint(k, n, alpha=alpha, method="wilson")
        np.testing.assert_allclose(lo, ref_lo, rtol=0, atol=1e-12)
        np.testing.assert_allclose(hi, ref_hi, rtol=0, atol=1e-12)
        np.testing.assert_allclose(p, k / n)
        for kk in {0, 1, n // 2, n}:
            ci = stats.binomtest(int(kk), n).proportion_ci(confidence_level=1 - alpha, method="wilson")
            assert (lo[kk], hi[kk]) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_is_vectorized_and_handles_the_ends():
    k = np.array([[0, 3], [9, 0]])
    n = np.array([[9, 9], [9, 0]])
    p, lo, hi = wilson_interval(k, n)
    assert p.shape == lo.shape == hi.shape == (2, 2)
    assert lo[0, 0] == 0.0 and hi[1, 0] == 1.0  # all-false starts at 0, all-true ends at 1, exactly
    assert 0 < hi[0, 0] < 1 and 0 < lo[1, 0] < 1
    assert all(math.isnan(x[1, 1]) for x in (p, lo, hi))  # n = 0
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(5, 3)
    with pytest.raises(ValueError, match="whole numbers"):
        wilson_interval(0.5, 3)
    with pytest.raises(ValueError, match="alpha"):
        wilson_interval(1, 3, alpha=0)


def test_rate_interval_edge_cases():
    r = rate_interval(np.ones(9, dtype=bool))
    assert (r.estimate, r.high, r.n, r.method) == (1.0, 1.0, 9, "wilson") and 0.6 < r.low < 1.0
    r = rate_interval(np.zeros(9, dtype=bool))
    assert (r.estimate, r.low) == (0.0, 0.0) and 0.0 < r.high < 0.4
    r = rate_interval(np.array([], dtype=bool))
    assert math.isnan(r.estimate) and math.isnan(r.low) and math.isnan(r.high) and (r.n, r.method) == (0, "none")
    assert rate_interval([1, 0, 1]) == rate_interval(np.array([True, False, True]))
    with pytest.raises(ValueError, match="boolean"):
        rate_interval([0.5, 1.0])


def test_wilson_covers_small_subsets_where_the_percentile_bootstrap_does_not():
    """Exact coverage (binomial sums, no simulation) at n = 9 (the mitigation subset of the embedded default),
    averaged over true rates 0.05..0.95: Wilson stays near 95%; the percentile bootstrap of 0/1 values, in its
    B -> infinity limit (quantiles of Binomial(n, k/n) / n), covers far less."""
    n, ps, k = 9, np.linspace(0.05, 0.95, 181), np.arange(10)
    _, lo, hi = wilson_interval(k, n)
    plo, phi = stats.binom.ppf(0.025, n, k / n) / n, stats.binom.ppf(0.975, n, k / n) / n

    def coverage(low, high):
        return np.array([(stats.binom.pmf(k, n, p) * ((low <= p) & (p <= high))).sum() for p in ps])

    wilson, percentile = coverage(lo, hi), coverage(plo, phi)
    assert 0.94 <= wilson.mean() <= 0.97 and wilson.min() > 0.89
    assert percentile.mean() < 0.85


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("chunk", [1 << 22, 1000])
def test_bca_equals_scipy(monkeypatch, seed, chunk):
    monkeypatch.setattr(intervals, "_CHUNK_ELEMENTS", chunk)  # scipy batches must not change the draws
    rng = np.random.default_rng(seed)
    for values, alpha, n_res in ((rng.random(50), 0.05, 2000), (rng.exponential(size=13), 0.1, 999),
                                 (rng.random(300) < 0.2, 0.05, 1000)):
        got = bca_interval(values, n_resamples=n_res, alpha=alpha, seed=seed)
        ref = stats.bootstrap((np.asarray(values, dtype=float),), np.mean, n_resamples=n_res, method="BCa",
                              confidence_level=1 - alpha, rng=np.random.default_rng(seed)).confidence_interval
        assert got.method == "bca" and got.n == len(values)
        assert got.estimate == pytest.approx(np.mean(values), rel=1e-12)
        assert (got.low, got.high) == pytest.approx((ref.low, ref.high), rel=1e-10, abs=1e-13)


def test_bca_of_a_ratio_equals_scipy():
    rng = np.random.default_rng(3)
    subset = rng.random(80) < 0.7
    flag = (rng.random(80) < 0.4) & subset
    got = bca_interval((flag, subset), statistic=ratio, n_resamples=1500, seed=2)
    ref = stats.bootstrap((flag.astype(float), subset.astype(float)), lambda f, s, axis: f.sum(axis) / s.sum(axis),
                          paired=True, n_resamples=1500, method="BCa", rng=np.random.default_rng(2))
    assert got.estimate == pytest.approx(flag.sum() / subset.sum())
    assert (got.low, got.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-10)


def test_bca_edge_cases():
    for values in (np.ones(10), np.zeros(7), np.full(5, 0.25)):
        r = bca_interval(values)
        assert r.low == r.high == r.estimate == values[0] and r.method == "constant"
    r = bca_interval([0.5])
    assert r.estimate == 0.5 and math.isnan(r.low) and math.isnan(r.high) and r.method == "none"
    r = bca_interval(np.array([]))
    assert math.isnan(r.estimate) and r.n == 0 and r.method == "none"
    assert bca_interval([0.1, 0.9, 0.4], seed=1) == bca_interval([0.1, 0.9, 0.4], seed=1)
    with pytest.raises(ValueError, match="n_resamples"):
        bca_interval([1.0, 0.0], n_resamples=0)
    with pytest.raises(ValueError, match="alpha"):
        bca_interval([1.0, 0.0], alpha=1.5)
    with pytest.raises(ValueError, match="NaN"):
        bca_interval([1.0, math.nan])


def _scipy_paired(a_cols, b_cols, stat, n_res, alpha, seed):
    k = len(a_cols)

    def diff(*s, axis):
        return stat(*[x.mean(axis=axis) for x in s[:k]]) - stat(*[x.mean(axis=axis) for x in s[k:]])
    data = tuple(np.asarray(c, dtype=float) for c in (*a_cols, *b_cols))
    return stats.bootstrap(data, diff, paired=True, n_resamples=n_res, method="BCa", confidence_level=1 - alpha,
                           rng=np.random.default_rng(seed)).confidence_interval


@pytest.mark.parametrize("chunk", [1 << 22, 500])
def test_paired_difference_equals_scipy_paired_bootstrap(monkeypatch, chunk):
    monkeypatch.setattr(intervals, "_CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(11)
    a, b = rng.random(450) < 0.3, rng.random(450) < 0.2
    got = paired_difference(a, b, n_resamples=1000, seed=4)
    ref = _scipy_paired([a], [b], lambda m: m, 1000, 0.05, 4)
    assert got.method == "paired-bca" and got.n == 450
    assert got.estimate == pytest.approx(a.mean() - b.mean())
    assert (got.low, got.high) == pytest.approx((ref.low, ref.high), rel=1e-10)
    # a rate over each model's own subset (the fooling rate: label changes among correct images)
    ca, cb = rng.random(450) < 0.9, rng.random(450) < 0.8
    got = paired_difference((a & ca, ca), (b & cb, cb), statistic=ratio, n_resamples=800, alpha=0.1, seed=9)
    ref = _scipy_paired([a & ca, ca], [b & cb, cb], lambda f, s: f / s, 800, 0.1, 9)
    assert got.estimate == pytest.approx((a & ca).sum() / ca.sum() - (b & cb).sum() / cb.sum())
    assert (got.low, got.high) == pytest.approx((ref.low, ref.high), rel=1e-10)


def test_paired_interval_is_the_one_that_sees_shared_failures():
    """Two models fail on the same 100 of 300 images, and model A on 15 more: the marginal Wilson intervals
    overlap, the paired interval excludes 0 (the 15 discordant images are all one way)."""
    a = np.zeros(300, dtype=bool)
    a[:115] = True
    b = np.zeros(300, dtype=bool)
    b[:100] = True
    ra, rb = rate_interval(a), rate_interval(b)
    assert ra.low < rb.high  # marginal intervals overlap
    d = paired_difference(a, b, seed=0)
    assert d.estimate == pytest.approx(0.05) and 0 < d.low < d.estimate < d.high
    # and with the failures on different images the same difference is not distinguishable from 0
    b2 = np.zeros(300, dtype=bool)
    b2[150:250] = True
    assert paired_difference(a, b2, seed=0).low < 0


def test_paired_edge_cases():
    x = np.random.default_rng(0).random(40) < 0.5
    r = paired_difference(x, x)  # identical outcomes: every resample differs by 0
    assert (r.estimate, r.low, r.high, r.method) == (0.0, 0.0, 0.0, "constant")
    r = paired_difference(np.ones(20, bool), np.zeros(20, bool))  # all-true vs all-false
    assert (r.estimate, r.low, r.high, r.method) == (1.0, 1.0, 1.0, "constant")
    r = paired_difference(np.array([], bool), np.array([], bool))
    assert r.n == 0 and math.isnan(r.estimate) and r.method == "none"
    # a subset with one image: resamples that miss it leave the rate undefined -> no interval, said so
    sub = np.zeros(30, dtype=bool)
    sub[3] = True
    r = paired_difference((sub, sub), (np.zeros(30, bool), np.ones(30, bool)), statistic=ratio)
    assert r.estimate == 1.0 and math.isnan(r.low) and math.isnan(r.high)
    with pytest.raises(ValueError, match="same images"):
        paired_difference(np.ones(5), np.ones(6))
    with pytest.raises(ValueError, match="same images"):
        paired_difference((np.ones(5), np.ones(4)), (np.ones(5), np.ones(5)), statistic=ratio)


def test_t_interval_equals_scipy():
    v = np.array([0.31, 0.27, 0.40, 0.35, 0.29])
    r = t_interval(v)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert (r.estimate, r.n, r.method) == (pytest.approx(v.mean()), 5, "t")
    assert (r.low, r.high) == pytest.approx((lo, hi), rel=1e-12)
    r = t_interval([0.3, math.nan, 0.5], alpha=0.1)  # NaN seeds (e.g. no high-confidence example) are dropped
    lo, hi = stats.t.interval(0.9, 1, loc=0.4, scale=stats.sem([0.3, 0.5]))
    assert r.n == 2 and (r.low, r.high) == pytest.approx((lo, hi))
    r = t_interval([0.2])
    assert r.estimate == 0.2 and math.isnan(r.low) and r.method == "none"
    assert t_interval([0.2, 0.2, 0.2]) == Interval(0.2, 0.2, 0.2, 3, "constant")
    assert t_interval([0.1, 0.9, 0.5], bounds=(0, 1)).low == 0.0  # cut to the range of a rate
    assert t_interval([]).n == 0
