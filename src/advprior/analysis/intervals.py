"""Confidence intervals for the study's numbers: Wilson for rates, BCa bootstrap for other statistics,
paired BCa for the difference of a statistic between two models on the same images, and Student's t
across training seeds.

- **Wilson score** (``wilson_interval``, ``rate_interval``): for a rate k/n. Closed form, no resampling;
  good coverage even for tiny n (the prior's mitigation rate is often a rate over fewer than 10 images,
  where a percentile bootstrap of 0/1 values covers far less than its nominal 95%). Equal to
  ``statsmodels.stats.proportion.proportion_confint(k, n, method="wilson")``.
- **BCa bootstrap** (``bca_interval``): bias-corrected and accelerated percentile interval of a mean (or
  of a smooth function of several columns' means, e.g. a ratio), resampled by
  ``scipy.stats.bootstrap`` from ``numpy.random.default_rng(seed)`` and equal to its ``method="BCa"``
  result; the jackknife behind the acceleration uses leave-one-out means, O(n) where scipy's is O(n^2).
- **Paired BCa** (``paired_difference``): the difference of such a statistic between two models on the
  SAME images; the images are resampled jointly (``paired=True``), so the interval reflects that both
  models saw the same images, not two independent samples.
- **Student's t** (``t_interval``): the mean of per-seed values +- t(1 - alpha/2, k - 1) * sd / sqrt(k),
  intersected with the range of the quantity (a rate stays in [0, 1]): the across-training-seed interval
  of the ``claims`` experiment.

Degenerate cases are explicit, never a silent NaN from a library warning: no data gives NaN everywhere
(method ``"none"``); one value gives the estimate with NaN bounds (no interval from one observation,
method ``"none"``); a bootstrap distribution that is constant (e.g. a constant sample, or two models with
identical outcomes) gives the point interval ``[estimate, estimate]`` (method ``"constant"``); a
statistic undefined on some resamples (e.g. a rate over a subset that a resample leaves empty) gives NaN
bounds (method ``"bca"``/``"paired-bca"``). A Wilson interval of n = 0 is NaN; of k = 0 starts at 0 and of
k = n ends at 1.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats

from advprior.analysis.categories import to_numpy

_CHUNK_ELEMENTS = 1 << 22  # resample rows per scipy batch * images <= this (~32 MiB of indices)


@dataclass(frozen=True)
class Interval:
    """An estimate with its (1 - alpha) interval, the number of observations and how it was computed."""

    estimate: float
    low: float
    high: float
    n: int
    method: str  # "wilson", "bca", "paired-bca", "t", "constant" (point interval) or "none" (too little data)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def wilson_interval(k: Any, n: Any, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rate ``k / n`` and its Wilson score (1 - alpha) interval, vectorized (k, n broadcast; integers).

    Returns float64 arrays ``(rate, low, high)`` of the broadcast shape; NaN where n == 0.
    """
    _check_alpha(alpha)
    k_arr, n_arr = np.broadcast_arrays(np.asarray(k), np.asarray(n))
    kf, nf = k_arr.astype(np.float64), n_arr.astype(np.float64)
    if np.any(kf != np.round(kf)) or np.any(nf != np.round(nf)):
        raise ValueError("k and n must be whole numbers (counts of successes and trials)")
    if np.any(nf < 0) or np.any(kf < 0) or np.any(kf > nf):
        raise ValueError("counts must satisfy 0 <= k <= n")
    z = stats.norm.isf(alpha / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = kf / nf
        denom = 1.0 + z * z / nf
        center = (p + z * z / (2.0 * nf)) / denom
        half = z * np.sqrt(p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)) / denom
    # the bounds touch 0 and 1 exactly at k = 0 and k = n (the formula leaves rounding noise there)
    low = np.where(kf == 0, 0.0, np.clip(center - half, 0.0, 1.0))
    high = np.where(kf == nf, 1.0, np.clip(center + half, 0.0, 1.0))
    empty = nf == 0
    return np.where(empty, np.nan, p), np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def rate_interval(values: Any, alpha: float = 0.05) -> Interval:
    """The rate of True in ``values`` ((n,) bool or 0/1) with its Wilson interval."""
    v = to_numpy(values).reshape(-1)
    if v.dtype != np.bool_:
        if not np.isin(v, (0, 1)).all():
            raise ValueError("a rate needs boolean (or 0/1) values")
        v = v.astype(bool)
    p, lo, hi = wilson_interval(int(v.sum()), v.shape[0], alpha)
    return Interval(float(p), float(lo), float(hi), int(v.shape[0]), "wilson" if v.shape[0] else "none")


MeanStatistic = Callable[..., np.ndarray]
"""``statistic(*column_means)``: a smooth function of the columns' means, elementwise on arrays."""


def _identity(m: np.ndarray) -> np.ndarray:
    return m


def ratio(num_mean: np.ndarray, den_mean: np.ndarray) -> np.ndarray:
    """mean(num) / mean(den) (NaN where den's mean is 0): with ``num = flag & subset`` and ``den = subset``,
    the rate of ``flag`` over the subset (e.g. the fooling rate: label changes among correct images)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(num_mean, dtype=np.float64) / den_mean


def _columns(x: Any) -> list[np.ndarray]:
    """A tuple is several (n,) columns; anything else (array, list, tensor) is one."""
    cols = list(x) if isinstance(x, tuple) else [x]
    out = [to_numpy(c).astype(np.float64).reshape(-1) for c in cols]
    if len({c.shape[0] for c in out}) != 1:
        raise ValueError(f"the columns must hold the same images: lengths {[c.shape[0] for c in out]}")
    if any(np.isnan(c).any() for c in out):
        raise ValueError("values must not contain NaN")
    return out


def _bca(cols: list[np.ndarray], statistic: MeanStatistic, n_resamples: int, alpha: float, seed: int,
         method: str) -> Interval:
    """BCa interval of ``statistic(*means of cols)``, rows resampled jointly.

    The resampling is ``scipy.stats.bootstrap``'s own (same generator, same draws); the bias correction
    and acceleration follow scipy's ``_bca_interval`` (Efron & Tibshirani 14.3, 15.4), but the jackknife
    uses leave-one-out means ``(sum - x_i) / (n - 1)``: O(n) instead of scipy's O(n^2), which takes
    minutes at 50,000 ImageNet images.
    """
    if not isinstance(n_resamples, int) or isinstance(n_resamples, bool) or n_resamples < 1:
        raise ValueError(f"n_resamples (attack.n_boot) must be a positive int, got {n_resamples!r}")
    _check_alpha(alpha)
    n = int(cols[0].shape[0])
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = float(statistic(*[c.mean() for c in cols]))
    if n < 2:
        return Interval(estimate, math.nan, math.nan, n, "none")

    def of_means(*s: np.ndarray, axis: int = -1) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return statistic(*[x.mean(axis=axis) for x in s])

    with warnings.catch_warnings():  # scipy warns of NaN bounds; they are handled below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(tuple(cols), of_means, n_resamples=n_resamples, batch=max(1, _CHUNK_ELEMENTS // n),
                              vectorized=True, paired=len(cols) > 1, method="percentile",
                              rng=np.random.default_rng(seed))
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    if not np.isnan(dist).any() and np.all(dist == dist[0]):
        # every resample gives the same value: the bootstrap's interval is that point (scipy's BCa gives NaN)
        return Interval(estimate, float(dist[0]), float(dist[0]), n, "constant")
    if np.isnan(dist).any() or math.isnan(estimate):
        return Interval(estimate, math.nan, math.nan, n, method)
    z0 = special.ndtri((np.count_nonzero(dist < estimate) + np.count_nonzero(dist <= estimate)) / (2 * dist.size))
    with np.errstate(invalid="ignore", divide="ignore"):
        theta_i = statistic(*[(c.sum() - c) / (n - 1) for c in cols])  # (n,) leave-one-out values
        u = (n - 1) * (theta_i.mean() - theta_i)
        a_hat = (np.sum(u**3) / n**3) / (np.sum(u**2) / n**2) ** 1.5 / 6
    z = special.ndtri(alpha / 2)
    levels = [special.ndtr(z0 + (z0 + zz) / (1 - a_hat * (z0 + zz))) for zz in (z, -z)]
    if any(math.isnan(float(q)) for q in levels):
        return Interval(estimate, math.nan, math.nan, n, method)
    low, high = stats.quantile(dist, np.asarray(levels, dtype=np.float64))
    return Interval(estimate, float(low), float(high), n, method)


def bca_interval(
    values: Any, statistic: MeanStatistic = _identity, n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> Interval:
    """The mean of ``values`` ((n,) numbers) with a seeded BCa bootstrap (1 - alpha) interval.

    ``values`` may also be a tuple of (n,) columns with ``statistic`` a function of their means (e.g.
    ``ratio``). Equals ``scipy.stats.bootstrap((values,), np.mean, n_resamples=n_resamples, method="BCa",
    confidence_level=1 - alpha, rng=np.random.default_rng(seed))`` where scipy's is defined.
    """
    return _bca(_columns(values), statistic, n_resamples, alpha, seed, "bca")


def paired_difference(
    a: Any, b: Any, statistic: MeanStatistic = _identity, n_resamples: int = 1000, alpha: float = 0.05,
    seed: int = 0,
) -> Interval:
    """``statistic(means of a) - statistic(means of b)`` with a paired BCa interval (images resampled jointly).

    a, b: per-image values of models A and B on the same images, in the same order: an (n,) array each,
    or a tuple of (n,) columns each when the statistic needs several (``(flag & subset, subset)`` with
    ``statistic=ratio`` for a rate over a subset). The default is the difference of the two means, so
    ``paired_difference(flags_a, flags_b)`` is the difference of two rates. Equals ``scipy.stats.bootstrap(
    (*a, *b), diff, paired=True, method="BCa", ...)`` with the same generator.
    """
    ca, cb = _columns(a), _columns(b)
    if ca[0].shape[0] != cb[0].shape[0]:
        raise ValueError(f"paired samples must hold the same images: {ca[0].shape[0]} vs {cb[0].shape[0]} rows")
    k = len(ca)

    def diff(*means: np.ndarray) -> np.ndarray:
        return statistic(*means[:k]) - statistic(*means[k:])

    return _bca(ca + cb, diff, n_resamples, alpha, seed, "paired-bca")


def t_interval(values: Any, alpha: float = 0.05, bounds: tuple[float, float] | None = None) -> Interval:
    """Mean of ``values`` ((k,) per-seed numbers; NaN entries dropped) with a Student-t (1 - alpha) interval.

    ``bounds``: the range the quantity can take (e.g. (0, 1) for a rate, (-1, 1) for a difference of rates);
    the interval is intersected with it (the mean lies there, so coverage can only grow). Fewer than two
    finite values: NaN bounds (method ``"none"``); all equal: the point interval.
    """
    _check_alpha(alpha)
    v = to_numpy(values).astype(np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    k = int(v.shape[0])
    if k == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    mean = float(v.mean())
    if k < 2:
        return Interval(mean, math.nan, math.nan, k, "none")
    if np.all(v == v[0]):
        return Interval(float(v[0]), float(v[0]), float(v[0]), k, "constant")
    half = float(stats.t.ppf(1 - alpha / 2, k - 1) * v.std(ddof=1) / math.sqrt(k))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Interval(mean, low, high, k, "t")
