"""Gaussian KDEs against exact scikit-learn KernelDensity and scipy's gaussian_kde."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import gaussian_kde
from sklearn.neighbors import KernelDensity

from advprior.prior import ClassConditionalKDE, GaussianKDE
from advprior.prior.kde import kfold_assignment


def _points(n=150, k=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 2.0, k, dtype=dtype)
    return torch.randn(n, k, generator=g, dtype=dtype) * scale + 5.0


def _queries(X, seed=1):
    g = torch.Generator().manual_seed(seed)
    near = X[:6] + 0.05 * torch.randn(6, X.shape[1], generator=g, dtype=X.dtype)
    far = X.mean(0) + 40 * torch.randn(6, X.shape[1], generator=g, dtype=X.dtype)
    return torch.cat([near, far])


def _sk_exact(X, h, Q):
    # leaf_size > n: a single leaf, so the tree sums every kernel exactly (no far-field approximation).
    kd = KernelDensity(kernel="gaussian", bandwidth=h, leaf_size=X.shape[0] + 1).fit(X.numpy())
    return kd.score_samples(Q.numpy())


@pytest.mark.parametrize("bandwidth", ["scott", "silverman", 0.37])
def test_isotropic_matches_exact_sklearn(bandwidth):
    X = _points()
    Q = _queries(X)
    kde = GaussianKDE(bandwidth).fit(X)
    ours = kde.log_density(Q).numpy()
    ref = _sk_exact(X, kde.h, Q)
    assert ref[6:].max() < -1e3  # the far queries are really far (thousands of nats down)
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


def test_isotropic_float32_far_queries():
    X = _points()
    Q = _queries(X)
    kde = GaussianKDE("scott").fit(X.float())
    ref = _sk_exact(X.float().double(), kde.h, Q.float().double())
    np.testing.assert_allclose(kde.log_density(Q.float()).double().numpy(), ref, rtol=1e-5)


@pytest.mark.parametrize("bandwidth", ["scott", "silverman", 0.5])
def test_full_covariance_matches_scipy(bandwidth):
    X = _points(n=120, k=5, seed=3)
    # Correlated dims so the full kernel differs from any isotropic one.
    X = X @ torch.tensor(np.random.default_rng(0).normal(size=(5, 5)))
    Q = _queries(X)
    kde = GaussianKDE(bandwidth, kernel_cov="full").fit(X)
    ref = gaussian_kde(X.numpy().T, bw_method=bandwidth)
    np.testing.assert_allclose(kde.kernel_covariance.numpy(), ref.covariance, rtol=1e-10)
    np.testing.assert_allclose(kde.log_density(Q).numpy(), ref.logpdf(Q.numpy().T), rtol=1e-9)
    assert kde.h == pytest.approx(ref.factor, rel=1e-12)


def test_bandwidth_rules_equal_formulas():
    n, k = 150, 8
    X = _points(n, k)
    std = X.std(0, unbiased=True).mean().item()
    assert GaussianKDE("scott").fit(X).h == pytest.approx(n ** (-1 / (k + 4)) * std, rel=1e-12)
    assert GaussianKDE("silverman").fit(X).h == pytest.approx((n * (k + 2) / 4) ** (-1 / (k + 4)) * std,
                                                              rel=1e-12)
    full = GaussianKDE("scott", "full").fit(X)
    cov = np.cov(X.numpy().T)
    np.testing.assert_allclose(full.kernel_covariance.numpy(), cov * n ** (-2 / (k + 4)), rtol=1e-10)


def _iso_log_density(train, h, q):
    """Independent formula: log mean_i N(q; x_i, h^2 I), float64."""
    d2 = ((q[:, None, :] - train[None, :, :]) ** 2).sum(-1)
    k = train.shape[1]
    return torch.logsumexp(-d2 / (2 * h * h), 1) - math.log(train.shape[0]) - 0.5 * k * math.log(2 * math.pi * h * h)


def test_cv_picks_heldout_likelihood_maximizer():
    # Two tight clusters far apart: a large h blurs them, a tiny h overfits; the optimum is interior.
    g = torch.Generator().manual_seed(4)
    X = torch.cat([torch.randn(40, 2, generator=g, dtype=torch.float64) * 0.3,
                   torch.randn(40, 2, generator=g, dtype=torch.float64) * 0.3 + 10])
    grid = np.logspace(-2, 1, 13)
    kde = GaussianKDE("cv", cv_grid=grid, cv_folds=4, seed=7).fit(X)
    fold = kfold_assignment(torch.tensor([80]), 80, 4, 7)[0]
    brute = []
    for h in grid:
        ll = sum(_iso_log_density(X[fold != f], h, X[fold == f]).sum().item() for f in range(4))
        brute.append(ll)
    best = grid[int(np.argmax(brute))]
    assert 0 < int(np.argmax(brute)) < len(grid) - 1
    assert kde.h == pytest.approx(best)
    np.testing.assert_allclose(kde.cv_scores_[0].numpy(), brute, rtol=1e-9)
    # Default grid: scott * logspace(-1, 1, 21).
    kde = GaussianKDE("cv").fit(X)
    scott = GaussianKDE("scott").fit(X).h
    np.testing.assert_allclose(kde.cv_grid_[0].numpy(), scott * np.logspace(-1, 1, 21), rtol=1e-12)


@pytest.mark.parametrize("kernel_cov", ["isotropic", "full"])
def test_class_conditional_equals_per_class(kernel_cov):
    g = torch.Generator().manual_seed(5)
    sizes = [30, 55, 41]
    pts = [torch.randn(n, 4, generator=g, dtype=torch.float64) * (c + 1) + c for c, n in enumerate(sizes)]
    q = torch.randn(3, 9, 4, generator=g, dtype=torch.float64) * 3
    for bw in ["scott", "silverman", 0.8, torch.tensor([0.5, 0.9, 1.3], dtype=torch.float64)]:
        cc = ClassConditionalKDE(bw, kernel_cov).fit(pts)
        ld = cc.log_density(q)
        assert ld.shape == (3, 9)
        for c in range(3):
            b = bw[c].item() if isinstance(bw, torch.Tensor) else bw
            single = GaussianKDE(b, kernel_cov).fit(pts[c])
            torch.testing.assert_close(ld[c], single.log_density(q[c]), rtol=1e-10, atol=1e-10)
            assert cc.bandwidth_[c].item() == pytest.approx(single.h, rel=1e-12)
    # Shared (B, k) queries are scored under every class; `classes` selects KDEs.
    cc = ClassConditionalKDE("scott", kernel_cov).fit(pts)
    shared = cc.log_density(q[0])
    for c in range(3):
        torch.testing.assert_close(shared[c], cc.log_density(q[0:1], classes=torch.tensor([c]))[0])
    # cv batched over classes equals per-class cv when the fold draw is the same (one class at a time).
    cv = ClassConditionalKDE("cv", kernel_cov, seed=3).fit(pts[1:2])
    assert cv.bandwidth_[0].item() == pytest.approx(GaussianKDE("cv", kernel_cov, seed=3).fit(pts[1]).h)


def test_class_conditional_padded_tensor_and_state_dict(tmp_path):
    g = torch.Generator().manual_seed(6)
    padded = torch.randn(2, 20, 3, generator=g)
    padded[0, 12:] = 1e6  # junk in padding rows must not leak into densities or bandwidths
    counts = torch.tensor([12, 20])
    cc = ClassConditionalKDE("scott").fit(padded, counts)
    ref = GaussianKDE("scott").fit(padded[0, :12])
    q = torch.randn(5, 3, generator=g)
    torch.testing.assert_close(cc.log_density(q)[0], ref.log_density(q))
    torch.save(cc.state_dict(), tmp_path / "kde.pt")
    fresh = ClassConditionalKDE("scott")
    fresh.load_state_dict(torch.load(tmp_path / "kde.pt", weights_only=True))
    torch.testing.assert_close(fresh.log_density(q), cc.log_density(q))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "foo", True])
def test_invalid_bandwidth(bad):
    with pytest.raises(ValueError, match="bandwidth"):
        GaussianKDE(bad)


def test_zero_spread_and_invalid_kernel():
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        GaussianKDE("scott").fit(torch.ones(10, 2))
    with pytest.raises(ValueError, match="kernel_cov"):
        GaussianKDE("scott", "diag")
