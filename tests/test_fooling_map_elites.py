"""MAP-Elites: elites only ever improve, the search finds a known optimum, the direct encoding is the
control on the same budget, and a crashed search resumes to exactly the uninterrupted archive."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from advprior.fooling import map_elites as me
from advprior.fooling.config import DirectConfig, FoolingConfig
from advprior.fooling.encodings import build_encoding, polynomial_mutation
from advprior.fooling.map_elites import EliteArchive, class_probabilities, map_elites
from advprior.models.classifier import Classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small ops: 2 threads only add overhead

K, H, W = 4, 32, 32
BAND = H * (W // K)  # pixels per class region


def band_model() -> tuple[Classifier, float]:
    """A linear model whose class k sums the pixels of vertical band k (scaled by s).

    The bands are disjoint, so p_k rises with band k's sum and falls with every other band's: the image
    that is 1 on band k and 0 elsewhere maximizes p_k, at p* = e^(s B) / (e^(s B) + K - 1) = 0.99."""
    s = math.log(0.99 * (K - 1) / 0.01) / BAND
    mask = torch.zeros(K, H, W)
    for k in range(K):
        mask[k, :, k * (W // K):(k + 1) * (W // K)] = 1
    lin = nn.Linear(H * W, K, bias=False)
    with torch.no_grad():
        lin.weight.copy_(s * mask.view(K, -1))
    model = Classifier(nn.Sequential(nn.Flatten(), lin), [0.0], [1.0], {}, K).freeze()
    optimum = class_probabilities(model)(mask[:, None]).diagonal()
    assert torch.allclose(optimum, torch.full((K,), 0.99), atol=1e-5)
    return model, float(optimum.max())


def search(encoding: str, model, seed: int = 0, population: int = 32, generations: int = 20, batch_size: int = 16,
           **kwargs) -> EliteArchive:
    sel, enc_seed = np.random.SeedSequence(seed).spawn(2)
    enc = build_encoding(encoding, FoolingConfig(), (1, H, W), "cpu", enc_seed)
    return map_elites(class_probabilities(model), enc, K, population, generations, batch_size,
                      np.random.default_rng(sel), **kwargs)


@pytest.fixture
def random_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 5, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, K))
    return Classifier(net, [0.5], [0.5], {}, K).freeze()


def test_update_keeps_only_strictly_better_elites():
    archive = EliteArchive.empty(3, (1, 2, 2))
    imgs = torch.arange(3 * 4, dtype=torch.float32).view(3, 1, 2, 2) / 12
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5]])
    assert archive.update(imgs, ["a", "b", "c"], probs) == 3
    # bin 0: tie between a and b -> the first; bin 1: tie a/c -> the first; bin 2: c
    assert archive.genes == ["a", "a", "c"] and torch.equal(archive.fitness, torch.tensor([0.5, 0.3, 0.5]))
    assert torch.equal(archive.images[2], imgs[2]) and archive.top1.tolist() == [0, 0, 2]
    # equal is not better; worse is not better; NaN never wins
    same = torch.tensor([[0.5, 0.3, 0.5], [0.4, 0.2, 0.1], [float("nan")] * 3])
    assert archive.update(imgs, ["d", "e", "f"], same) == 0 and archive.genes == ["a", "a", "c"]
    better = torch.tensor([[0.5, 0.31, 0.19]])
    assert archive.update(imgs[1:2], ["g"], better) == 1
    assert archive.genes == ["a", "g", "c"] and archive.fitness[1] == pytest.approx(0.31)
    assert torch.equal(archive.images[1], imgs[1]) and archive.top1[1] == 0 and archive.top1_prob[1] == 0.5
    with pytest.raises(ValueError, match="probs must be"):
        archive.update(imgs, ["x", "y"], better)


@pytest.mark.parametrize("encoding", ["cppn", "direct"])
def test_an_elite_is_only_ever_replaced_by_a_strictly_better_one(encoding, random_model, monkeypatch):
    real, calls = EliteArchive.update, {"n": 0}

    def checked(self, images, genes, probs):
        before_f, before_img, before_genes = self.fitness.clone(), self.images.clone(), list(self.genes)
        n = real(self, images, genes, probs)
        changed = self.fitness != before_f
        assert bool((self.fitness >= before_f).all()), "an elite got worse"
        assert int(changed.sum()) == n
        best = torch.nan_to_num(probs.float(), nan=-1.0).max(0).values
        assert torch.equal(self.fitness[changed], best[changed]) and bool((best[changed] > before_f[changed]).all())
        kept = ~changed
        assert torch.equal(self.images[kept], before_img[kept])
        assert all(self.genes[k] is before_genes[k] for k in np.flatnonzero(kept.numpy()))
        calls["n"] += 1
        return n

    monkeypatch.setattr(EliteArchive, "update", checked)
    archive = search(encoding, random_model, population=16, generations=12, batch_size=8)
    assert calls["n"] == 12 * 2 and archive.evaluations == 16 * 12
    assert len(archive.filled()) == K  # generation 0 fills every bin
    means = [h["fitness_mean"] for h in archive.history]
    assert means == sorted(means)


def test_cppn_search_finds_the_known_optimum_far_above_chance():
    model, optimum = band_model()
    archive = search("cppn", model, population=32, generations=25)
    p = archive.fitness
    assert bool((p <= optimum + 1e-6).all()), "above the analytic optimum: the scoring is wrong"
    assert bool((p >= 0.8).all()), f"elite probabilities {p.tolist()} (chance 0.25, optimum 0.99)"
    assert archive.top1.tolist() == list(range(K))
    # the elites are what the model says they are
    torch.testing.assert_close(class_probabilities(model)(archive.images).diagonal(), p, atol=1e-6, rtol=0)


def test_direct_encoding_is_the_control_on_the_same_loop_and_budget():
    model, optimum = band_model()
    cppn, direct = search("cppn", model, population=32, generations=25), search("direct", model, population=32,
                                                                                 generations=25)
    assert cppn.evaluations == direct.evaluations == 32 * 25
    assert [h["evaluations"] for h in cppn.history] == [h["evaluations"] for h in direct.history]
    for a in (cppn, direct):
        assert bool((a.fitness <= optimum + 1e-6).all())
        assert a.history[-1]["fitness_mean"] > a.history[0]["fitness_mean"]  # both improve on random genes
    # one gene per pixel climbs slowly in 1024 dimensions; a CPPN draws a band with a few genes
    assert float(cppn.fitness.mean()) > float(direct.fitness.mean()) + 0.2, (cppn.fitness, direct.fitness)


@pytest.mark.parametrize("encoding", ["cppn", "direct"])
def test_search_is_reproducible_from_its_seed(encoding, random_model):
    a = search(encoding, random_model, seed=3, population=8, generations=5)
    b = search(encoding, random_model, seed=3, population=8, generations=5)
    c = search(encoding, random_model, seed=4, population=8, generations=5)
    assert torch.equal(a.fitness, b.fitness) and torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("encoding", ["cppn", "direct"])
def test_a_crashed_search_resumes_to_the_uninterrupted_archive(encoding, random_model, tmp_path, monkeypatch):
    kwargs = dict(population=12, generations=9, batch_size=5, checkpoint_every=2)
    fresh = search(encoding, random_model, seed=1, **kwargs)
    real, calls = me.generation_step, {"n": 0}

    def crash_in_generation_6(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("simulated crash")
        return real(*args, **kw)

    ck = tmp_path / "checkpoint.pt"
    monkeypatch.setattr(me, "generation_step", crash_in_generation_6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        search(encoding, random_model, seed=1, checkpoint=ck, **kwargs)
    monkeypatch.setattr(me, "generation_step", real)
    assert ck.is_file()
    assert me.load_torch(ck)["next_generation"] == 4  # the last checkpoint before the crash
    resumed = search(encoding, random_model, seed=1, checkpoint=ck, **kwargs)
    assert torch.equal(resumed.fitness, fresh.fitness) and torch.equal(resumed.images, fresh.images)
    assert torch.equal(resumed.top1, fresh.top1) and torch.equal(resumed.top1_prob, fresh.top1_prob)
    assert resumed.evaluations == fresh.evaluations and resumed.history == fresh.history
    enc = build_encoding(encoding, FoolingConfig(), (1, H, W), "cpu", 0)
    assert json.dumps([enc.gene_to_json(g) for g in resumed.genes]) == json.dumps([enc.gene_to_json(g) for g in fresh.genes])
    if encoding == "direct":
        assert all(torch.equal(g, img) for g, img in zip(resumed.genes, resumed.images))
    # a checkpoint of another search is refused, not silently mixed in
    with pytest.raises(ValueError, match="another search"):
        search(encoding, random_model, seed=1, checkpoint=ck, population=6, generations=9, batch_size=5)


def test_polynomial_mutation_matches_debs_formula_and_stays_in_range():
    x = torch.tensor([0.0, 0.5, 0.5, 1.0, 0.2])
    u = torch.tensor([0.25, 0.0, 0.75, 0.9, 0.5])
    eta = 15.0
    out = polynomial_mutation(x.clone(), u, eta)
    p = 1 / (eta + 1)
    expected = [0.0 + ((2 * 0.25) ** p - 1), 0.5 + (0.0 ** p - 1), 0.5 + (1 - (2 * 0.25) ** p),
                1.0 + (1 - (2 * 0.1) ** p), 0.2 + (1 - 1.0 ** p)]
    torch.testing.assert_close(out, torch.tensor(expected).clamp(0, 1), atol=1e-6, rtol=0)
    enc = build_encoding("direct", FoolingConfig(direct=DirectConfig(mutation_rate=0.1, halve_every=10)),
                         (3, 8, 8), "cpu", 0)
    assert enc.rate(9) == 0.1 and enc.rate(10) == 0.05 and enc.rate(25) == 0.025
    parents = enc.random(50)
    children = enc.mutate(parents, 0)
    changed = torch.stack([c != p for c, p in zip(children, parents)]).float().mean()
    assert 0.05 < float(changed) < 0.15  # about mutation_rate of the pixels
    assert all(float(c.min()) >= 0 and float(c.max()) <= 1 for c in children)
