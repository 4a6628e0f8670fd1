"""CPPN genomes after Nguyen, Yosinski & Clune (2015): a small feed-forward network maps each pixel's
coordinates to its colour, so one genome draws a whole image with regular, repeating structure.

A ``Genome`` is a DAG: inputs ``x, y, d`` (distance from the centre) and a bias (node ids 0..3); one
output per image channel (ids 4..4+C-1); hidden nodes (larger ids), each hidden and output node with an
activation from ``ACTIVATIONS``; weighted connections ``(src, dst) -> w``. Every genome this module
makes is *valid* (``check_genome``): acyclic, connections run from an input or hidden node to a hidden
or output node, every hidden and output node has an incoming connection and every hidden node an
outgoing one (so every output depends on the inputs and no node dangles). Mutations return a new valid
genome and leave the parent untouched. Genomes serialize to JSON (``to_json`` / ``from_json``).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

N_INPUTS = 4
INPUT_NAMES = ("x", "y", "d", "bias")

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sine": torch.sin,
    "sigmoid": torch.sigmoid,
    "gaussian": lambda s: torch.exp(-s * s),
    "identity": lambda s: s,
    "tanh": torch.tanh,
    "abs": torch.abs,
    "cos": torch.cos,
}
"""Activation name -> elementwise function (pre-activation tensor in, activation out)."""


@dataclass(frozen=True, eq=True)
class Genome:
    """A CPPN: ``nodes`` maps hidden and output node ids to activation names, ``edges`` maps
    ``(src, dst)`` to a weight; ``next_id`` is the id the next new hidden node gets."""

    n_outputs: int
    nodes: dict[int, str]
    edges: dict[tuple[int, int], float]
    next_id: int

    @property
    def outputs(self) -> range:
        return range(N_INPUTS, N_INPUTS + self.n_outputs)

    @property
    def hidden(self) -> list[int]:
        return sorted(n for n in self.nodes if n >= N_INPUTS + self.n_outputs)


def is_input(node: int) -> bool:
    return 0 <= node < N_INPUTS


def topological_order(g: Genome) -> list[int]:
    """Every node (inputs first) in an order where each connection points forward (Kahn's algorithm,
    smallest id first); raises ``ValueError`` on a cycle."""
    indeg = {n: 0 for n in range(N_INPUTS)} | {n: 0 for n in g.nodes}
    succ: dict[int, list[int]] = {n: [] for n in indeg}
    for s, d in g.edges:
        indeg[d] += 1
        succ[s].append(d)
    ready = sorted(n for n, k in indeg.items() if k == 0)
    order: list[int] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for d in sorted(succ[n]):
            indeg[d] -= 1
            if indeg[d] == 0:
                ready.append(d)
        ready.sort()
    if len(order) != len(indeg):
        raise ValueError("the genome has a cycle: a CPPN must be a feed-forward (acyclic) network")
    return order


def check_genome(g: Genome, activations: tuple[str, ...] | list[str] | None = None) -> None:
    """Raise ``ValueError`` naming the first way ``g`` is not a valid CPPN (see the module docstring)."""
    if g.n_outputs < 1:
        raise ValueError(f"a genome needs at least one output, got n_outputs={g.n_outputs}")
    allowed = set(activations or ACTIVATIONS)
    missing = [o for o in g.outputs if o not in g.nodes]
    if missing:
        raise ValueError(f"output nodes {missing} have no activation")
    for n, a in g.nodes.items():
        if n < N_INPUTS:
            raise ValueError(f"node {n} is an input; inputs have no activation")
        if a not in allowed:
            raise ValueError(f"node {n} has activation {a!r}, not one of {sorted(allowed)}")
    if g.nodes and g.next_id <= max(g.nodes):
        raise ValueError(f"next_id={g.next_id} must exceed every node id (max {max(g.nodes)})")
    hidden = set(g.hidden)
    indeg = {n: 0 for n in g.nodes}
    outdeg = {n: 0 for n in hidden}
    for (s, d), w in g.edges.items():
        if not (is_input(s) or s in hidden):
            raise ValueError(f"connection {s}->{d} starts at {s}, which is neither an input nor a hidden node")
        if d not in g.nodes:
            raise ValueError(f"connection {s}->{d} ends at {d}, which is neither a hidden nor an output node")
        if not math.isfinite(w):
            raise ValueError(f"connection {s}->{d} has a non-finite weight {w}")
        indeg[d] += 1
        if s in outdeg:
            outdeg[s] += 1
    no_in = sorted(n for n, k in indeg.items() if k == 0)
    if no_in:
        raise ValueError(f"nodes {no_in} have no incoming connection (dangling)")
    no_out = sorted(n for n, k in outdeg.items() if k == 0)
    if no_out:
        raise ValueError(f"hidden nodes {no_out} have no outgoing connection (dangling)")
    topological_order(g)


def random_genome(rng: np.random.Generator, n_outputs: int, activations: list[str] | tuple[str, ...],
                  weight_range: float, n_hidden: int = 0) -> Genome:
    """Every input connected to every output with weights uniform in ``[-weight_range, weight_range]``,
    random output activations, then ``n_hidden`` connections split by new hidden nodes."""
    acts = list(activations)
    outputs = range(N_INPUTS, N_INPUTS + n_outputs)
    nodes = {o: acts[rng.integers(len(acts))] for o in outputs}
    w = rng.uniform(-weight_range, weight_range, size=(N_INPUTS, n_outputs))
    edges = {(i, o): float(w[i, k]) for i in range(N_INPUTS) for k, o in enumerate(outputs)}
    g = _Draft(Genome(n_outputs, nodes, edges, N_INPUTS + n_outputs))
    for _ in range(n_hidden):
        _add_node(g, rng, acts)
    return g.freeze()


# --- mutations: each edits a valid genome's copied (nodes, edges) in place and keeps it valid ---

class _Draft:
    """A mutable copy of a genome while one child is being made."""

    __slots__ = ("n_outputs", "nodes", "edges", "next_id")

    def __init__(self, g: Genome) -> None:
        self.n_outputs, self.nodes, self.edges, self.next_id = g.n_outputs, dict(g.nodes), dict(g.edges), g.next_id

    def hidden(self) -> list[int]:
        first = N_INPUTS + self.n_outputs
        return sorted(n for n in self.nodes if n >= first)

    def freeze(self) -> Genome:
        # sorted dicts: a genome read back from JSON iterates (and so mutates) exactly like the original
        return Genome(self.n_outputs, dict(sorted(self.nodes.items())), dict(sorted(self.edges.items())), self.next_id)


def _add_node(g: _Draft, rng: np.random.Generator, acts: list[str]) -> None:
    """Split a random connection a->b (weight w) into a->h (weight 1) and h->b (weight w)."""
    keys = list(g.edges)
    a, b = keys[rng.integers(len(keys))]
    h = g.next_id
    w = g.edges.pop((a, b))
    g.edges[(a, h)] = 1.0
    g.edges[(h, b)] = w
    g.nodes[h] = acts[rng.integers(len(acts))]
    g.next_id = h + 1


def _remove_node(g: _Draft, rng: np.random.Generator) -> None:
    """Remove a random hidden node; a successor left without inputs gets one of the node's predecessors,
    a hidden predecessor left without outputs gets one of its successors (forward edges: still acyclic)."""
    hidden = g.hidden()
    if not hidden:
        return
    h = hidden[rng.integers(len(hidden))]
    preds = [(s, w) for (s, d), w in g.edges.items() if d == h]
    succs = [(d, w) for (s, d), w in g.edges.items() if s == h]
    g.edges = {k: w for k, w in g.edges.items() if h not in k}
    del g.nodes[h]
    has_in = {d for _, d in g.edges}
    has_out = {s for s, _ in g.edges}
    for d, w in succs:
        if d not in has_in:
            p = preds[rng.integers(len(preds))][0]
            g.edges[(p, d)] = w
            has_out.add(p)
    for p, w in preds:
        if not is_input(p) and p not in has_out:
            g.edges[(p, succs[rng.integers(len(succs))][0])] = w


def _reaches(edges: dict[tuple[int, int], float], start: int, goal: int) -> bool:
    """Whether a path of connections leads from ``start`` to ``goal``."""
    succ: dict[int, list[int]] = {}
    for s, d in edges:
        succ.setdefault(s, []).append(d)
    stack, seen = [start], {start}
    while stack:
        n = stack.pop()
        if n == goal:
            return True
        for d in succ.get(n, ()):
            if d not in seen:
                seen.add(d)
                stack.append(d)
    return False


def _add_connection(g: _Draft, rng: np.random.Generator, weight_range: float, tries: int = 16) -> None:
    """Add a random new connection src->dst that keeps the graph acyclic (up to ``tries`` random picks)."""
    hidden = g.hidden()
    sources = list(range(N_INPUTS)) + hidden
    targets = hidden + list(range(N_INPUTS, N_INPUTS + g.n_outputs))
    for _ in range(tries):
        s = sources[rng.integers(len(sources))]
        d = targets[rng.integers(len(targets))]
        if s == d or (s, d) in g.edges or (not is_input(s) and _reaches(g.edges, d, s)):
            continue
        g.edges[(s, d)] = float(rng.uniform(-weight_range, weight_range))
        return


def _remove_connection(g: _Draft, rng: np.random.Generator) -> None:
    """Remove a random connection whose target keeps another input and whose source another output."""
    indeg: dict[int, int] = {}
    outdeg: dict[int, int] = {}
    for s, d in g.edges:
        indeg[d] = indeg.get(d, 0) + 1
        outdeg[s] = outdeg.get(s, 0) + 1
    removable = [(s, d) for s, d in g.edges if indeg[d] > 1 and (is_input(s) or outdeg[s] > 1)]
    if not removable:
        return
    del g.edges[removable[rng.integers(len(removable))]]


def _mutate_activations(g: _Draft, rng: np.random.Generator, acts: list[str], rate: float) -> None:
    if len(acts) < 2:
        return
    ids = sorted(g.nodes)
    hit = np.flatnonzero(rng.random(len(ids)) < rate)
    for i in hit:
        n = ids[i]
        others = [a for a in acts if a != g.nodes[n]]
        g.nodes[n] = others[rng.integers(len(others))]


def _mutate_weights(g: _Draft, rng: np.random.Generator, rate: float, sigma: float, weight_range: float) -> None:
    keys = list(g.edges)
    hit = np.flatnonzero(rng.random(len(keys)) < rate)
    for i, e in zip(hit.tolist(), rng.normal(0.0, sigma, size=len(hit)).tolist()):
        g.edges[keys[i]] = min(max(g.edges[keys[i]] + e, -weight_range), weight_range)


def _move_one_weight(g: _Draft, rng: np.random.Generator, sigma: float, weight_range: float) -> None:
    """Perturb one random weight, stepping inwards where the step would leave it at its bound."""
    keys = list(g.edges)
    k = keys[rng.integers(len(keys))]
    e = float(rng.normal(0.0, sigma))
    w = min(max(g.edges[k] + e, -weight_range), weight_range)
    g.edges[k] = w if w != g.edges[k] else min(max(g.edges[k] - e, -weight_range), weight_range)


def mutate(g: Genome, rng: np.random.Generator, cfg) -> Genome:
    """A mutated copy of ``g`` (``cfg``: a ``CPPNConfig``): structural mutations each with their probability,
    then activation and weight perturbations; a child that came out equal to its parent gets one weight
    moved, so every child differs from its parent."""
    acts = list(cfg.activations)
    child = _Draft(g)
    coins = rng.random(4)
    if coins[0] < cfg.add_node and len(child.hidden()) < cfg.max_hidden:
        _add_node(child, rng, acts)
    if coins[1] < cfg.remove_node:
        _remove_node(child, rng)
    if coins[2] < cfg.add_connection:
        _add_connection(child, rng, cfg.weight_range)
    if coins[3] < cfg.remove_connection:
        _remove_connection(child, rng)
    _mutate_activations(child, rng, acts, cfg.activation_rate)
    _mutate_weights(child, rng, cfg.weight_rate, cfg.weight_sigma, cfg.weight_range)
    if child.nodes == g.nodes and child.edges == g.edges:
        _move_one_weight(child, rng, cfg.weight_sigma, cfg.weight_range)
    return child.freeze()


# --- JSON ---

def to_json(g: Genome) -> dict:
    """A JSON-able dict: ``{"n_outputs", "nodes": [[id, activation]...], "edges": [[src, dst, w]...], "next_id"}``."""
    return {"n_outputs": g.n_outputs, "nodes": [[n, a] for n, a in sorted(g.nodes.items())],
            "edges": [[s, d, w] for (s, d), w in sorted(g.edges.items())], "next_id": g.next_id}


def from_json(obj: dict) -> Genome:
    """The genome of ``to_json(g)`` (checked: a malformed genome raises ``ValueError``)."""
    try:
        g = Genome(int(obj["n_outputs"]), {int(n): str(a) for n, a in obj["nodes"]},
                   {(int(s), int(d)): float(w) for s, d, w in obj["edges"]}, int(obj["next_id"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a CPPN genome JSON ({type(e).__name__}: {e}); expected the keys "
                         "n_outputs, nodes, edges, next_id") from e
    check_genome(g)
    return g
