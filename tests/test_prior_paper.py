"""The paper's prior as written: full-covariance kernel, per-class standardized codes, a held-out support split
with early stopping, held-out / leave-one-out bandwidths, and the shared code space."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from advprior.prior import BatchedAutoencoder, ClassConditionalKDE, ClassPCA, ClassPrior, GaussianKDE, fit_class_prior
from advprior.prior.autoencoder import fit_autoencoder, masked_class_mse
from advprior.prior.class_prior import holdout_split
from advprior.keys import AFFECTS
from advprior.stages.prior_fit import PRIOR_KEY

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _support(counts=(40, 35, 45), D=10, seed=5):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    feats = torch.rand(len(labels), D, generator=g) + labels[:, None] * 0.5
    return feats, labels


FIT = dict(n_components=4, bottleneck=2, epochs=4, batch_size=8, engine="torch", seed=0)


# ---------------------------------------------------------------------------------------------------
# Held-out split and early stopping
# ---------------------------------------------------------------------------------------------------
def test_holdout_split_per_class_and_seeded():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 3)
    m = holdout_split(labels, 3, 0.2, seed=1)
    assert [int(m[labels == c].sum()) for c in range(3)] == [2, 1, 1]  # round(0.2 n), at least 1
    assert torch.equal(m, holdout_split(labels, 3, 0.2, seed=1))
    assert not torch.equal(m, holdout_split(labels, 3, 0.2, seed=2))
    assert not holdout_split(labels, 3, 0.0, seed=1).any()
    with pytest.raises(ValueError, match="val_fraction must be in"):
        holdout_split(labels, 3, 1.0, seed=0)
    with pytest.raises(ValueError, match="too few to hold any out"):
        holdout_split(torch.tensor([0, 0, 1]), 2, 0.5, seed=0)


def _codes(C=3, n=40, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(torch.randn(C, n, 2, generator=g) @ torch.randn(C, 2, d, generator=g))


@pytest.mark.parametrize("engine", ["torch", "lightning"])
def test_early_stopping_stops_at_a_plateau(engine):
    """A learning rate of 1e-9 keeps the held-out loss flat (changes far below min_delta): training stops
    exactly ``patience`` epochs after the first one, and the first epoch's weights are kept."""
    tr, va = _codes(seed=0), _codes(n=10, seed=1)
    ae, hist = fit_autoencoder(tr, epochs=50, batch_size=16, lr=1e-9, bottleneck=2, seed=0, engine=engine,
                               val_codes=va, patience=3, min_delta=1e-4)
    assert len(hist) == len(hist.val) == 4 and hist.best_epoch == 0
    with torch.no_grad():
        kept = masked_class_mse(ae(va), va).mean().item()
    assert kept == pytest.approx(hist.val[0], rel=1e-6)


@pytest.mark.parametrize("engine", ["torch", "lightning"])
def test_early_stopping_keeps_the_best_epoch(engine):
    """Whatever the curve: training ran exactly best + patience + 1 epochs (or hit the maximum), the best
    epoch has the lowest held-out loss, and the returned weights have that loss."""
    tr, va = _codes(n=12, seed=2), _codes(n=30, seed=3)  # few training points: the held-out loss turns up
    ae, hist = fit_autoencoder(tr, epochs=200, batch_size=4, lr=3e-2, bottleneck=2, seed=0, engine=engine,
                               val_codes=va, patience=4)
    assert hist.best_epoch == int(np.argmin(hist.val))
    assert len(hist.val) == hist.best_epoch + 4 + 1 < 200
    with torch.no_grad():
        assert masked_class_mse(ae(va), va).mean().item() == pytest.approx(min(hist.val), rel=1e-6)


def test_engines_agree_with_early_stopping():
    tr, va = _codes(n=12, seed=2), _codes(n=30, seed=3)
    kw = dict(epochs=30, batch_size=4, lr=3e-2, bottleneck=2, seed=0, val_codes=va, patience=3)
    a, ha = fit_autoencoder(tr, **kw)
    b, hb = fit_autoencoder(tr, engine="torch", **kw)
    assert ha.val == pytest.approx(hb.val, rel=1e-5) and ha.best_epoch == hb.best_epoch
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_early_stopping_needs_heldout_data():
    with pytest.raises(ValueError, match="needs held-out data"):
        fit_autoencoder(_codes(), epochs=2, patience=2)
    feats, labels = _support()
    with pytest.raises(ValueError, match="val_fraction > 0"):
        fit_class_prior(feats, labels, **FIT, patience=2)
    with pytest.raises(ValueError, match="val_fraction > 0"):
        fit_class_prior(feats, labels, **FIT, bandwidth="heldout")


# ---------------------------------------------------------------------------------------------------
# Bandwidth on held-out points / leave-one-out
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("k", [2, 4])
def test_heldout_bandwidth_has_the_right_order_of_magnitude(sigma, k):
    """Gaussian data N(0, sigma^2 I): the likelihood-optimal bandwidth is ~ sigma * n^(-1/(k+4)) (Scott's
    AMISE-optimal value for a Gaussian). The grid spans 12 decades, blind to sigma."""
    g = torch.Generator().manual_seed(k)
    n = 200
    X = torch.randn(n, k, generator=g, dtype=torch.float64) * sigma
    H = torch.randn(400, k, generator=g, dtype=torch.float64) * sigma
    grid = np.logspace(-6, 6, 97)
    expected = sigma * n ** (-1 / (k + 4))
    for kde in (GaussianKDE("heldout", cv_grid=grid).fit(X, heldout=H), GaussianKDE("loo", cv_grid=grid).fit(X)):
        assert expected / 3 < kde.h < expected * 3, (kde.h, expected)


def test_loo_and_heldout_equal_brute_force():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(30, 2, generator=g, dtype=torch.float64)
    H = torch.randn(20, 2, generator=g, dtype=torch.float64) * 1.5
    grid = np.logspace(-1.5, 0.5, 9)

    def log_f(train, h, q):
        d2 = ((q[:, None] - train[None]) ** 2).sum(-1)
        return torch.logsumexp(-d2 / (2 * h * h), 1) - math.log(len(train)) - math.log(2 * math.pi * h * h)

    loo = [sum(log_f(torch.cat([X[:i], X[i + 1:]]), h, X[i:i + 1]).item() for i in range(30)) for h in grid]
    held = [log_f(X, h, H).sum().item() for h in grid]
    kl, kh = GaussianKDE("loo", cv_grid=grid).fit(X), GaussianKDE("heldout", cv_grid=grid).fit(X, heldout=H)
    np.testing.assert_allclose(kl.cv_scores_[0].numpy(), loo, rtol=1e-10)
    np.testing.assert_allclose(kh.cv_scores_[0].numpy(), held, rtol=1e-10)
    assert kl.h == grid[int(np.argmax(loo))] and kh.h == grid[int(np.argmax(held))]
    # Full kernel: the held-out points are mapped by the fitted points' covariance (scipy's kernel shape).
    full = GaussianKDE("heldout", kernel_cov="full", cv_grid=grid).fit(X, heldout=H)
    from scipy.stats import gaussian_kde
    ref = [gaussian_kde(X.numpy().T, bw_method=f).logpdf(H.numpy().T).sum() for f in grid]
    np.testing.assert_allclose(full.cv_scores_[0].numpy(), ref, rtol=1e-9)
    with pytest.raises(ValueError, match="needs held-out points"):
        GaussianKDE("heldout").fit(X)


# ---------------------------------------------------------------------------------------------------
# Standardized codes, full kernel
# ---------------------------------------------------------------------------------------------------
def test_standardized_codes_full_kernel_equal_the_raw_density_plus_log_std():
    """The full-covariance KDE is affine-equivariant: standardizing class y's codes by (mean_y, std_y) shifts
    its log density by exactly sum_j log std_yj (the scale removed; no Jacobian is added back)."""
    feats, labels = _support()
    raw = fit_class_prior(feats, labels, **FIT, kernel_cov="full")
    std = fit_class_prior(feats, labels, **FIT, kernel_cov="full", standardize=True)
    assert std.standardized and std.code_std_.shape == (3, 2)
    # the statistics are those of each class's own support codes
    with torch.no_grad():
        z = raw.pca.transform(feats, labels)
        codes = raw.autoencoder.encode(z.unsqueeze(1), labels)[:, 0]
    for c in range(3):
        torch.testing.assert_close(std.code_mean_[c], codes[labels == c].mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(std.code_std_[c], codes[labels == c].std(0), rtol=1e-5, atol=1e-6)
    q = feats[::7]
    with torch.no_grad():
        torch.testing.assert_close(std(q), raw(q) + std.code_std_.log().sum(1)[None, :], rtol=1e-4, atol=1e-3)
    # kernel covariance = factor^2 * cov(standardized codes) (scipy's eq. 6 kernel)
    for c in range(3):
        zc = ((codes[labels == c] - std.code_mean_[c]) / std.code_std_[c]).double().numpy()
        f = float(std.kde.bandwidth_[c])
        np.testing.assert_allclose(std.kde.covariance_[c].double().numpy(), f * f * np.cov(zc.T), rtol=1e-4,
                                   atol=1e-6)


def test_standardized_isotropic_kernel_is_a_per_dim_bandwidth_kde():
    feats, labels = _support()
    prior = fit_class_prior(feats, labels, **FIT, standardize=True, bandwidth=0.4)
    q = feats[::5]
    with torch.no_grad():
        out = prior(q).double()
        z = prior.pca.transform(feats, labels)
        codes = prior.autoencoder.encode(z.unsqueeze(1), labels)[:, 0].double()
        qc = prior.autoencoder.encode(prior.pca.transform_all(q)).double()  # (C, B, k)
    for c in range(3):
        m, s = prior.code_mean_[c].double(), prior.code_std_[c].double()
        pts, qq = (codes[labels == c] - m) / s, (qc[c] - m) / s
        d2 = ((qq[:, None] - pts[None]) ** 2).sum(-1)
        ref = torch.logsumexp(-d2 / (2 * 0.16), 1) - math.log(len(pts)) - math.log(2 * math.pi * 0.16)
        torch.testing.assert_close(out[:, c], ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# The shared code space
# ---------------------------------------------------------------------------------------------------
def test_shared_space_shapes_and_reload(tmp_path):
    feats, labels = _support()
    prior = fit_class_prior(feats, labels, **FIT, space="shared", standardize=True, val_fraction=0.2,
                            bandwidth="heldout", kernel_cov="full", patience=2)
    assert prior.space == "shared" and prior.num_classes == 3
    assert prior.pca.num_classes == 1 and prior.autoencoder.num_classes == 1 and prior.kde.num_classes == 3
    assert prior.code_std_.shape == (1, 2)  # one pooled map: densities stay comparable across classes
    out = prior(feats[:7])
    assert out.shape == (7, 3) and torch.isfinite(out).all()
    cls = torch.tensor([[0, 2], [1, 1], [2, 0], [0, 1], [2, 2], [1, 0], [0, 0]])
    torch.testing.assert_close(prior(feats[:7], classes=cls), out.gather(1, cls))
    # every class's KDE sees its own held-out-free support codes in the one shared space
    held = holdout_split(labels, 3, 0.2, 0)
    assert prior.kde.counts_.tolist() == [int((labels[~held] == c).sum()) for c in range(3)]
    torch.save(prior.state_dict(), tmp_path / "p.pt")
    fresh = ClassPrior(ClassPCA(4), BatchedAutoencoder(1, 4, 2), ClassConditionalKDE(), space="shared",
                       num_classes=3)
    fresh.load_state_dict(torch.load(tmp_path / "p.pt", weights_only=True))
    torch.testing.assert_close(fresh.freeze()(feats[:7]), out)


@pytest.mark.parametrize("standardize", [False, True])
def test_shared_equals_per_class_with_one_class(standardize):
    feats, _ = _support()
    one = torch.zeros(len(feats), dtype=torch.long)
    kw = dict(FIT, standardize=standardize, val_fraction=0.2, bandwidth="heldout", patience=2)
    per_class = fit_class_prior(feats, one, **kw)
    shared = fit_class_prior(feats, one, **kw, space="shared")
    q = feats[:9]
    assert torch.equal(per_class(q), shared(q))  # same PCA, autoencoder, statistics and KDE, bit for bit
    zero = torch.zeros(9, 1, dtype=torch.long)  # the shortlist path projects with another kernel: close
    torch.testing.assert_close(per_class(q, classes=zero), shared(q, classes=zero), rtol=1e-4, atol=1e-5)


def test_class_prior_space_arguments():
    ae, pca, kde = BatchedAutoencoder(3, 4, 2), ClassPCA(4), ClassConditionalKDE()
    with pytest.raises(ValueError, match="space must be one of"):
        ClassPrior(pca, ae, kde, space="global")
    with pytest.raises(ValueError, match="num_classes=1"):
        ClassPrior(pca, ae, kde, space="shared", num_classes=3)
    with pytest.raises(ValueError, match="needs num_classes"):
        ClassPrior(pca, BatchedAutoencoder(1, 4, 2), kde, space="shared")


# ---------------------------------------------------------------------------------------------------
# Config: every fit option is in the prior's store key
# ---------------------------------------------------------------------------------------------------
def test_every_fit_option_is_in_the_store_key():
    conf = yaml.safe_load((ROOT / "conf" / "prior" / "default.yaml").read_text())
    # weight/top_k act at inference (defense key); support_per_class via the feature key; shard_size is I/O
    not_fit = {"weight", "top_k", "support_per_class", "shard_size", "feature_layer"}  # feature_layer: features key
    fit = {f"prior.{k}.{sub}" for k, v in conf.items() if isinstance(v, dict) for sub in v} | {
        f"prior.{k}" for k, v in conf.items() if not isinstance(v, dict) and k not in not_fit}
    assert {leaf: PRIOR_KEY.classify(leaf) for leaf in fit} == dict.fromkeys(fit, AFFECTS)
    paper = yaml.safe_load((ROOT / "conf" / "prior" / "paper.yaml").read_text())
    assert {k for k in paper if k != "defaults"} <= set(conf)
    assert (paper["kernel_cov"], paper["standardize"], paper["bandwidth"]) == ("full", True, "heldout")
    assert paper["val_fraction"] > 0 and paper["ae"]["patience"] >= 1
