"""Posterior p(y|x,r) ∝ p(y|x) p(r|y,x) against an explicit numpy computation on a hand-made tiny prior."""
import numpy as np
import pytest
import torch
from scipy.special import logsumexp, log_softmax
from torch import nn
from torch.nn import functional as F

from advprior.models.classifier import Classifier
from advprior.prior import (BatchedAutoencoder, BayesianPriorClassifier, ClassConditionalKDE, ClassPCA,
                            ClassPrior, fit_class_prior)

C, D = 3, 12


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; thread barriers on busy shared cores dominate otherwise
    yield
    torch.set_num_threads(n)


def _model(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, D), nn.ReLU(), nn.Linear(D, C))
    return Classifier(net, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], {"fc6": net[2]}, num_classes=C).eval()


def _toy_prior(seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(3 * 9, D, generator=g) * 2
    labels = torch.arange(3).repeat_interleave(9)
    pca = ClassPCA(4).fit(feats, labels)
    ae = BatchedAutoencoder(C, in_dim=4, bottleneck=1, seed=seed)  # 4 -> 2 (leaky) -> 1
    pts = [torch.randn(n, 1, generator=g) for n in (3, 5, 4)]
    kde = ClassConditionalKDE(torch.tensor([0.5, 0.7, 0.9])).fit(pts)
    return ClassPrior(pca, ae, kde).freeze(), pts


def _numpy_posterior(model, prior, pts, x, weight):
    x = x.double().numpy()
    sd = {k: v.double().numpy() for k, v in model.state_dict().items()}
    xn = ((x - sd["normalize.mean"]) / sd["normalize.std"]).reshape(len(x), -1)
    fc6 = np.maximum(xn @ sd["net.1.weight"].T + sd["net.1.bias"], 0)
    logits = fc6 @ sd["net.3.weight"].T + sd["net.3.bias"]
    pca, ae = prior.pca, prior.autoencoder
    log_prior = np.zeros((len(x), C))
    for y in range(C):
        z = (fc6 - pca.mean_[y].double().numpy()) @ pca.components_[y].double().numpy().T
        h = z @ ae.enc_weight[0][y].double().numpy().T + ae.enc_bias[0][y].double().numpy()
        h = np.where(h > 0, h, 0.33 * h)
        code = h @ ae.enc_weight[1][y].double().numpy().T + ae.enc_bias[1][y].double().numpy()  # (B, 1)
        bw = [0.5, 0.7, 0.9][y]
        p = pts[y].double().numpy()[:, 0]
        lk = -((code - p[None, :]) ** 2) / (2 * bw**2) - 0.5 * np.log(2 * np.pi * bw**2)
        log_prior[:, y] = logsumexp(lk, axis=1) - np.log(len(p))
    log_lik = log_softmax(logits, axis=1)
    return log_lik, log_prior, log_softmax(log_lik + weight * log_prior, axis=1)


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_posterior_equals_explicit_formula(weight):
    model = _model()
    prior, pts = _toy_prior()
    clf = BayesianPriorClassifier(model, prior, weight=weight)
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        comp = clf.components(x)
    log_lik, log_prior, log_post = _numpy_posterior(model, prior, pts, x, weight)
    np.testing.assert_allclose(comp["log_likelihood"].double().numpy(), log_lik, atol=1e-5)
    np.testing.assert_allclose(comp["log_prior"].double().numpy(), log_prior, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(comp["log_posterior"].double().numpy(), log_post, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), comp["log_posterior"])
        torch.testing.assert_close(clf(x).exp().sum(1), torch.ones(6), atol=1e-6, rtol=0)


def test_gradients_reach_the_image():
    clf = BayesianPriorClassifier(_model(), _toy_prior()[0])
    x = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    loss = F.cross_entropy(clf(x), torch.tensor([0, 1, 2, 0]))  # log posterior used as logits
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # The prior term alone also carries gradient to the image (through fc6).
    x.grad = None
    clf.components(x)["log_prior"].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_top_k():
    model, (prior, _) = _model(), _toy_prior()
    x = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    exact = BayesianPriorClassifier(model, prior)
    full_k = BayesianPriorClassifier(model, prior, top_k=C)
    torch.testing.assert_close(full_k(x), exact(x))
    assert full_k.shortlist_agreement(x) == 1.0
    # top_k=2: the shortlisted entries are the exact joint renormalized over the shortlist.
    short = BayesianPriorClassifier(model, prior, top_k=2)
    comp = exact.components(x)
    joint = comp["log_likelihood"] + comp["log_prior"]
    top = comp["log_likelihood"].topk(2, dim=1).indices
    out = short(x)
    torch.testing.assert_close(out.gather(1, top), torch.log_softmax(joint.gather(1, top), 1))
    off = torch.ones_like(out, dtype=torch.bool).scatter(1, top, False)
    assert torch.isneginf(out[off]).all()
    torch.testing.assert_close(out.exp().sum(1), torch.ones(8))
    agree = short.shortlist_agreement(x)
    expected = (out.argmax(1) == exact(x).argmax(1)).float().mean().item()
    assert agree == pytest.approx(expected)
    # Gradient stays finite even through excluded classes.
    xg = x.clone().requires_grad_(True)
    F.cross_entropy(short(xg), comp["log_likelihood"].argmin(1)).backward()
    assert torch.isfinite(xg.grad).all()


def test_prior_gathered_classes_equal_full():
    prior, _ = _toy_prior()
    fc6 = torch.rand(5, D)
    full = prior(fc6)
    cls = torch.tensor([[2, 0], [1, 1], [0, 2], [2, 1], [1, 0]])
    torch.testing.assert_close(prior(fc6, classes=cls), full.gather(1, cls))
    prior.chunk_size = 2  # large batches run in chunks of images: same result
    torch.testing.assert_close(prior(fc6), full)


def test_invalid_arguments():
    prior, _ = _toy_prior()
    with pytest.raises(ValueError, match="top_k"):
        BayesianPriorClassifier(_model(), prior, top_k=0)
    with pytest.raises(ValueError, match="forward_with_features"):
        BayesianPriorClassifier(nn.Linear(2, 3), prior)


def test_fit_class_prior_end_to_end(tmp_path):
    g = torch.Generator().manual_seed(5)
    counts = [14, 11, 17]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    feats = torch.rand(len(labels), 10, generator=g) + labels[:, None] * 0.5
    prior = fit_class_prior(feats, labels, n_components=4, bottleneck=2, epochs=3, batch_size=8,
                            engine="torch", seed=0)
    out = prior(feats[:6])
    assert out.shape == (6, 3) and torch.isfinite(out).all()
    assert len(prior.loss_history) == 3
    assert not any(p.requires_grad for p in prior.parameters())
    # Own-class support points score higher under their own class than under the others, on average.
    lp = prior(feats)
    assert (lp.argmax(1) == labels).float().mean() > 0.5
    torch.save(prior.state_dict(), tmp_path / "prior.pt")
    fresh = ClassPrior(ClassPCA(4), BatchedAutoencoder(3, 4, 2), ClassConditionalKDE())
    fresh.load_state_dict(torch.load(tmp_path / "prior.pt", weights_only=True))
    torch.testing.assert_close(fresh(feats[:6]), out)


def test_fused_first_layer_equals_unfused():
    prior, _ = _toy_prior()  # frozen: the PCA projection is folded into the first encoder layer
    fc6 = torch.rand(5, D, generator=torch.Generator().manual_seed(7))
    fused = prior(fc6)
    assert prior._fused is not None
    prior.fuse = False
    torch.testing.assert_close(fused, prior(fc6), rtol=1e-5, atol=1e-5)
    prior.fuse = True
    with torch.no_grad():  # an in-place change of the first layer invalidates the cache
        prior.autoencoder.enc_weight[0].mul_(1.5)
    refused = prior(fc6)
    prior.fuse = False
    torch.testing.assert_close(refused, prior(fc6), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(refused, fused)
    # Trainable first layer: no fusion, gradients reach the encoder weights.
    prior.fuse = True
    prior.autoencoder.enc_weight[0].requires_grad_(True)
    prior(fc6).sum().backward()
    assert prior.autoencoder.enc_weight[0].grad is not None
