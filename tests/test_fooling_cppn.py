"""CPPN genomes: validity under every mutation, JSON, and the batched renderer against hand computations."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from advprior.fooling import cppn
from advprior.fooling.config import CPPNConfig
from advprior.fooling.cppn import ACTIVATIONS, N_INPUTS, Genome, check_genome, from_json, mutate, random_genome, to_json
from advprior.fooling.render import cppn_inputs, render_cppns

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small ops: 2 threads only add overhead

X, Y, D, BIAS = range(N_INPUTS)
OUT = N_INPUTS  # the first output node


def grown(seed: int, n: int = 16, steps: int = 25, channels: int = 1, cfg: CPPNConfig | None = None) -> list[Genome]:
    """``n`` random genomes mutated ``steps`` times each (structure of realistic size)."""
    cfg = cfg or CPPNConfig()
    rng = np.random.default_rng(seed)
    genomes = [random_genome(rng, channels, cfg.activations, cfg.weight_range, cfg.init_hidden) for _ in range(n)]
    for _ in range(steps):
        genomes = [mutate(g, rng, cfg) for g in genomes]
    return genomes


def reference_render(g: Genome, height: int, width: int) -> torch.Tensor:
    """Node-by-node float64 evaluation in topological order with the ``ACTIVATIONS`` table."""
    inputs = cppn_inputs(height, width, dtype=torch.float64)
    val = {i: inputs[i] for i in range(N_INPUTS)}
    for n in cppn.topological_order(g):
        if n >= N_INPUTS:
            val[n] = ACTIVATIONS[g.nodes[n]](sum(w * val[s] for (s, d), w in g.edges.items() if d == n))
    return torch.stack([val[o].abs().clamp(max=1) for o in g.outputs]).view(-1, height, width)


def test_render_equals_the_formula_of_a_hand_built_genome():
    # out = gaussian(1.5 * sin(3 x) - 2 d + 0.5 * bias); hidden node 5 = sin(3 x); one gray output
    g = Genome(1, {OUT: "gaussian", 5: "sine"}, {(X, 5): 3.0, (5, OUT): 1.5, (D, OUT): -2.0, (BIAS, OUT): 0.5}, 6)
    check_genome(g)
    img = render_cppns([g], 5, 7)
    assert img.shape == (1, 1, 5, 7) and img.dtype == torch.float32
    ys, xs = torch.linspace(-1, 1, 5, dtype=torch.float64), torch.linspace(-1, 1, 7, dtype=torch.float64)
    y, x = torch.meshgrid(ys, xs, indexing="ij")  # x runs along the width, y down the height
    d = torch.sqrt(x ** 2 + y ** 2)
    expected = torch.exp(-(1.5 * torch.sin(3 * x) - 2 * d + 0.5) ** 2)
    torch.testing.assert_close(img[0, 0].double(), expected, atol=1e-6, rtol=0)
    # a colour output per channel; |identity| clamped to [0, 1]: (x + y) / 2 -> |.|, 3 y -> clamp
    c = Genome(3, {4: "identity", 5: "identity", 6: "sigmoid"},
               {(X, 4): 0.5, (Y, 4): 0.5, (Y, 5): 3.0, (BIAS, 6): 0.0}, 7)
    img = render_cppns([c], 5, 7)[0].double()
    torch.testing.assert_close(img[0], ((x + y) / 2).abs(), atol=1e-6, rtol=0)
    torch.testing.assert_close(img[1], (3 * y).abs().clamp(max=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(img[2], torch.full_like(x, 0.5), atol=0, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_render_is_deterministic_in_range_and_matches_a_float64_reference(channels):
    genomes = grown(0, n=24, channels=channels)
    a, b = render_cppns(genomes, 12, 20), render_cppns(genomes, 12, 20)
    assert a.shape == (24, channels, 12, 20) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    for img, g in zip(a, genomes):
        torch.testing.assert_close(img.double(), reference_render(g, 12, 20), atol=1e-4, rtol=0)
    # a genome's image does not depend on the batch it is rendered in
    alone = torch.cat([render_cppns([g], 12, 20) for g in genomes])
    torch.testing.assert_close(alone, a, atol=1e-6, rtol=0)
    torch.testing.assert_close(render_cppns(genomes[::-1], 12, 20), a.flip(0), atol=1e-6, rtol=0)


def test_render_rejects_mixed_outputs_and_empty_batches():
    with pytest.raises(ValueError, match="same number of outputs"):
        render_cppns(grown(0, n=1, channels=1) + grown(0, n=1, channels=3), 4, 4)
    with pytest.raises(ValueError, match="at least one genome"):
        render_cppns([], 4, 4)


@pytest.mark.parametrize("cfg", [
    CPPNConfig(),
    CPPNConfig(add_node=0.9, remove_node=0.6, add_connection=0.9, remove_connection=0.9, activation_rate=0.5),
    CPPNConfig(add_node=0.2, remove_node=0.9, add_connection=0.3, remove_connection=0.9, max_hidden=3),
    CPPNConfig(activations=["sine"], init_hidden=0),
], ids=["default", "structural", "shrinking", "one-activation"])
def test_every_mutation_leaves_a_valid_network(cfg):
    rng = np.random.default_rng(123)
    for chain in range(12):
        g = random_genome(rng, 1 + 2 * (chain % 2), cfg.activations, cfg.weight_range, cfg.init_hidden)
        check_genome(g, cfg.activations)
        for _ in range(120):
            before = json.dumps(to_json(g))
            child = mutate(g, rng, cfg)
            check_genome(child, cfg.activations)
            assert json.dumps(to_json(g)) == before, "a mutation changed its parent"
            assert child != g, "a child equal to its parent wastes an evaluation"
            assert len(child.hidden) <= max(cfg.max_hidden, len(g.hidden))
            assert all(abs(w) <= cfg.weight_range for w in child.edges.values())
            g = child


def test_removing_every_hidden_node_keeps_the_network_valid():
    cfg = CPPNConfig(add_node=0.0, remove_node=1.0, add_connection=0.0, remove_connection=0.0)
    rng = np.random.default_rng(5)
    g = random_genome(rng, 3, cfg.activations, cfg.weight_range, n_hidden=12)
    for _ in range(20):  # extra connections first, so removals have to rewire
        g = mutate(g, rng, CPPNConfig(add_node=0.0, remove_node=0.0, add_connection=1.0, remove_connection=0.0))
    while g.hidden:
        g = mutate(g, rng, cfg)
        check_genome(g)
    assert all(any(d == o for _, d in g.edges) for o in g.outputs)


@pytest.mark.parametrize("genome, message", [
    (Genome(1, {OUT: "sine", 5: "sine"}, {(X, 5): 1.0, (5, 6): 1.0, (6, 5): 1.0, (5, OUT): 1.0}, 7), "neither"),
    (Genome(1, {OUT: "sine", 5: "sine", 6: "tanh"}, {(X, 5): 1.0, (6, 5): 1.0, (5, 6): 1.0, (5, OUT): 1.0}, 7), "cycle"),
    (Genome(2, {OUT: "sine", 5: "sine"}, {(X, OUT): 1.0}, 6), "no incoming"),
    (Genome(1, {OUT: "sine", 5: "sine"}, {(X, OUT): 1.0, (X, 5): 1.0}, 6), "no outgoing"),
    (Genome(1, {OUT: "sine"}, {(X, OUT): 1.0, (OUT, X): 1.0}, 5), "starts at 4"),
    (Genome(1, {OUT: "nope"}, {(X, OUT): 1.0}, 5), "activation 'nope'"),
    (Genome(1, {OUT: "sine"}, {(X, OUT): float("nan")}, 5), "non-finite"),
    (Genome(1, {OUT: "sine", 5: "sine"}, {(X, 5): 1.0, (5, OUT): 1.0}, 5), "next_id"),
])
def test_check_genome_names_what_is_wrong(genome, message):
    with pytest.raises(ValueError, match=message):
        check_genome(genome)


def test_genomes_round_trip_through_json():
    for g in grown(3, n=8, channels=3):
        back = from_json(json.loads(json.dumps(to_json(g))))
        assert back == g
        assert torch.equal(render_cppns([back], 8, 8), render_cppns([g], 8, 8))
    with pytest.raises(ValueError, match="not a CPPN genome"):
        from_json({"nodes": []})
    with pytest.raises(ValueError, match="no incoming"):
        from_json({"n_outputs": 1, "nodes": [[4, "sine"]], "edges": [], "next_id": 5})


def test_mutation_is_reproducible_from_the_seed():
    assert [to_json(g) for g in grown(7)] == [to_json(g) for g in grown(7)]
    assert [to_json(g) for g in grown(7)] != [to_json(g) for g in grown(8)]
