"""ClassPCA against scikit-learn's PCA(svd_solver="full"), fitted class by class."""
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from advprior.prior import ClassPCA
from advprior.utils.io import load_torch, save_torch


def _data(sizes, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(sizes)])
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    # Decaying spectrum + class-dependent offset so every class has distinct, well-separated eigenvalues.
    scales = torch.logspace(0, -1.5, D, dtype=torch.float64)
    X = torch.randn(labels.numel(), D, generator=g, dtype=torch.float64) * scales + labels[:, None] * 0.3
    return X, labels


@pytest.mark.parametrize(
    "sizes,D,d",
    [([20, 33, 26, 41], 60, 10),  # n < D: Gram-matrix path, unequal class sizes
     ([50, 90, 64], 7, 5)],  # n > D: covariance path
)
def test_matches_sklearn(sizes, D, d):
    X, y = _data(sizes, D)
    pca = ClassPCA(d).fit(X, y)
    scores, counts = ClassPCA(d).fit_transform(X, y)
    assert counts.tolist() == sizes
    Q = X[:7]
    all_q = pca.transform_all(Q)
    assert all_q.shape == (len(sizes), 7, d)
    for c in range(len(sizes)):
        Xc = X[y == c].numpy()
        sk = PCA(n_components=d, svd_solver="full").fit(Xc)
        np.testing.assert_allclose(pca.mean_[c].numpy(), sk.mean_, atol=1e-6)
        np.testing.assert_allclose(pca.components_[c].numpy(), sk.components_, atol=1e-5)  # same signs
        np.testing.assert_allclose(pca.explained_variance_[c].numpy(), sk.explained_variance_, rtol=1e-5)
        np.testing.assert_allclose(pca.explained_variance_ratio_[c].numpy(), sk.explained_variance_ratio_,
                                   rtol=1e-5)
        ref = sk.transform(Q.numpy())
        np.testing.assert_allclose(pca.transform(Q, c).numpy(), ref, atol=1e-5)
        np.testing.assert_allclose(all_q[c].numpy(), ref, atol=1e-5)
        np.testing.assert_allclose(scores[c, : sizes[c]].numpy(), sk.transform(Xc), atol=1e-5)
        assert (scores[c, sizes[c]:] == 0).all()
    # Per-row classes.
    cls = torch.tensor([0, 1, 2, 1, 0, 2, 1]) % len(sizes)
    per_row = pca.transform(Q, cls)
    for i, c in enumerate(cls.tolist()):
        torch.testing.assert_close(per_row[i], all_q[c, i], atol=1e-5, rtol=0)


def test_chunked_fit_equals_single_chunk():
    X, y = _data([20, 33, 26, 41, 25], 40, seed=1)
    a = ClassPCA(6).fit(X, y)
    b = ClassPCA(6, chunk_bytes=1).fit(X, y)  # one class per chunk
    for name in ("mean_", "components_", "explained_variance_ratio_", "proj_mean_"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-6, rtol=0)


def test_float32_input_and_components_orthonormal():
    X, y = _data([30, 45], 50, seed=2)
    pca = ClassPCA(8).fit(X.float(), y)
    gram = pca.components_ @ pca.components_.transpose(1, 2)
    torch.testing.assert_close(gram, torch.eye(8).expand(2, 8, 8), atol=1e-5, rtol=0)
    assert pca.components_.dtype == torch.float32


def test_too_small_class_raises():
    X, y = _data([20, 8, 30], 50)
    with pytest.raises(ValueError) as err:
        ClassPCA(8).fit(X, y)
    msg = str(err.value)
    assert "class 1" in msg and "8 points" in msg and "d+1=9" in msg and "256" in msg
    ClassPCA(7).fit(X, y)  # exactly d+1 points is enough
    with pytest.raises(ValueError, match="class 3 has 0"):
        ClassPCA(4).fit(X, y, num_classes=4)


def test_state_dict_roundtrip(tmp_path):
    X, y = _data([20, 25], 30)
    pca = ClassPCA(5).fit(X, y)
    save_torch(pca.state_dict(), tmp_path / "pca.pt")
    fresh = ClassPCA(5)
    fresh.load_state_dict(load_torch(tmp_path / "pca.pt"))
    torch.testing.assert_close(fresh.transform_all(X[:3]), pca.transform_all(X[:3]))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="n_components"):
        ClassPCA(0)
    X, y = _data([20, 25], 10)
    with pytest.raises(ValueError, match="exceeds the feature dimension"):
        ClassPCA(11).fit(X, y)
    with pytest.raises(ValueError, match="labels"):
        ClassPCA(3).fit(X, y.float())
