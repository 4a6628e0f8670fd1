"""Render many CPPN genomes at once, level by level, in torch.

Every node of every genome in a batch gets one *row* of a value buffer ``(rows, pixels)``: 4 shared input
rows (x, y, d, bias), then the hidden nodes level by level (level = longest path from the inputs), then
the outputs. One level of all genomes is evaluated together: one ``embedding_bag`` gathers each row's
source rows and sums them weighted (the connections of the whole level in one call), then each
activation in use runs once, on the contiguous slice of rows that use it (rows are sorted by activation).
The work is proportional to the number of connections times pixels.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .cppn import ACTIVATIONS, N_INPUTS, Genome

_ACT_INDEX = {name: i for i, name in enumerate(ACTIVATIONS)}


@functools.lru_cache(maxsize=8)
def cppn_inputs(height: int, width: int, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The CPPN inputs of every pixel, ``(4, height * width)`` row-major: x and y in [-1, 1] (left to right,
    top to bottom), the distance from the centre ``sqrt(x^2 + y^2)``, and a bias of 1. Cached: do not
    modify the returned tensor."""
    def axis(n: int) -> torch.Tensor:
        return torch.linspace(-1.0, 1.0, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    y, x = torch.meshgrid(axis(height), axis(width), indexing="ij")
    d = torch.sqrt(x * x + y * y)
    return torch.stack([x, y, d, torch.ones_like(x)]).reshape(4, -1).to(device=device, dtype=dtype)


# In-place activations on a slice of the value buffer; each equals its ``ACTIVATIONS`` function.
_INPLACE = {
    "sine": torch.Tensor.sin_,
    "sigmoid": torch.Tensor.sigmoid_,
    "gaussian": lambda v: v.square_().neg_().exp_(),
    "identity": None,
    "tanh": torch.Tensor.tanh_,
    "abs": torch.Tensor.abs_,
    "cos": torch.Tensor.cos_,
}
_INPLACE_FNS = [_INPLACE[name] for name in ACTIVATIONS]


@dataclass
class CompiledBatch:
    """A batch of genomes as arrays. Level ``i`` fills rows ``starts[i]:starts[i+1]`` from connections
    ``edge_starts[i]:edge_starts[i+1]`` of the flat arrays ``src`` (source rows) and ``weight``, grouped by
    target row in row order; ``bag[r]``: where row ``r``'s connections start, relative to its level's
    first connection; ``segments[i]``: ``(activation index, first row, end row)``; ``out_rows``:
    ``(G, C)``, the rows holding each genome's outputs."""

    starts: list[int]
    edge_starts: list[int]
    src: np.ndarray
    weight: np.ndarray
    bag: np.ndarray
    segments: list[list[tuple[int, int, int]]]
    out_rows: np.ndarray


def compile_batch(genomes: Sequence[Genome]) -> CompiledBatch:
    """Lay out the rows of a batch (see the module docstring); every genome needs the same outputs.

    Rows are ordered by (level, activation, genome, node id) and each row sums its incoming connections
    by source node id, so a genome's arithmetic depends neither on its batch nor on the order of its dicts."""
    if not genomes:
        raise ValueError("compile_batch needs at least one genome")
    n_out = genomes[0].n_outputs
    if any(g.n_outputs != n_out for g in genomes):
        raise ValueError(f"genomes of one batch must have the same number of outputs, got {sorted({g.n_outputs for g in genomes})}")
    span = max(g.next_id for g in genomes)  # node ids of genome i become i * span + id
    node_ids = [np.fromiter(g.nodes, dtype=np.int64, count=len(g.nodes)) for g in genomes]
    node_acts = [np.fromiter((_ACT_INDEX[a] for a in g.nodes.values()), dtype=np.int64, count=len(g.nodes))
                 for g in genomes]
    pairs = [np.fromiter((i for e in g.edges for i in e), dtype=np.int64, count=2 * len(g.edges)).reshape(-1, 2)
             for g in genomes]
    weight = np.concatenate([np.fromiter(g.edges.values(), dtype=np.float32, count=len(g.edges)) for g in genomes])
    base = np.repeat(np.arange(len(genomes)) * span, [len(p) for p in pairs])
    pairs = np.concatenate(pairs)
    src_local, dst = pairs[:, 0], pairs[:, 1] + base
    src = np.where(src_local < N_INPUTS, -1, src_local + base)  # -1: an input
    nodes = np.concatenate(node_ids) + np.repeat(np.arange(len(genomes)) * span, [len(n) for n in node_ids])
    acts = np.concatenate(node_acts)
    # longest path from the inputs, by relaxation (one sweep per level, plus one to confirm)
    level = np.zeros(len(genomes) * span, dtype=np.int64)
    is_in = src < 0
    for _ in range(len(nodes) + 2):
        new = level.copy()
        np.maximum.at(new, dst, np.where(is_in, 1, level[np.maximum(src, 0)] + 1))
        if np.array_equal(new, level):
            break
        level = new
    else:
        raise ValueError("the genome has a cycle: a CPPN must be a feed-forward (acyclic) network")
    node_level = level[nodes]
    is_out = (nodes % span) < N_INPUTS + n_out
    node_level[is_out] = node_level.max(initial=0) + 1  # outputs: one last level after every hidden node
    order = np.lexsort((nodes, acts, node_level))  # genome order is inside `nodes` (i * span + id)
    first_row = N_INPUTS
    row = np.zeros(len(genomes) * span, dtype=np.int64)
    row[nodes[order]] = np.arange(len(order)) + first_row
    by_dst = np.lexsort((src_local, row[dst]))  # rows in order; within a row, by source node id
    src_row = np.where(is_in, src_local, row[np.maximum(src, 0)])[by_dst]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(row[dst] - first_row, minlength=len(order)))])
    levels_sorted, acts_sorted = node_level[order], acts[order]
    bounds = [0, *(np.flatnonzero(np.diff(levels_sorted)) + 1).tolist(), len(order)]
    starts = [first_row + b for b in bounds]
    edge_starts = [int(offsets[b]) for b in bounds]
    bag = offsets[:-1] - np.repeat(edge_starts[:-1], np.diff(bounds))
    segments = []
    for a, b in zip(starts[:-1], starts[1:]):
        la = acts_sorted[a - first_row:b - first_row]
        cuts = [0, *(np.flatnonzero(np.diff(la)) + 1).tolist(), b - a]
        segments.append([(int(la[c]), a + c, a + e) for c, e in zip(cuts[:-1], cuts[1:])])
    out_nodes = np.arange(len(genomes))[:, None] * span + np.arange(N_INPUTS, N_INPUTS + n_out)[None, :]
    return CompiledBatch(starts, edge_starts, src_row, weight[by_dst], bag, segments, row[out_nodes])


# Activations writing into ``out``; each equals its ``ACTIVATIONS`` function.
_INTO = {
    "sine": lambda s, out: torch.sin(s, out=out),
    "sigmoid": lambda s, out: torch.sigmoid(s, out=out),
    "gaussian": lambda s, out: torch.exp(torch.square(s, out=out).neg_(), out=out),
    "identity": lambda s, out: out.copy_(s),
    "tanh": lambda s, out: torch.tanh(s, out=out),
    "abs": lambda s, out: torch.abs(s, out=out),
    "cos": lambda s, out: torch.cos(s, out=out),
}
_INTO_FNS = [_INTO[name] for name in ACTIVATIONS]


def render_cppns(genomes: Sequence[Genome], height: int, width: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images ``(G, n_outputs, height, width)`` in [0, 1] on ``device``: pixel = clamp(|output activation|, 0, 1).

    Deterministic for a genome. Each level is one ``embedding_bag`` (gather and weighted sum of the
    source rows in one pass) and one activation call per activation in use."""
    cb = compile_batch(genomes)
    values = torch.empty(cb.starts[-1], height * width, device=device, dtype=dtype)
    values[:N_INPUTS] = cppn_inputs(height, width, torch.device(device), dtype)
    # one host-to-device copy each for all levels' sources, weights and bag offsets
    src = torch.from_numpy(cb.src).to(device)
    wts = torch.from_numpy(cb.weight).to(device=device, dtype=dtype)
    bag = torch.from_numpy(cb.bag).to(device)
    for i, seg in enumerate(cb.segments):
        a, b = cb.starts[i], cb.starts[i + 1]
        e0, e1 = cb.edge_starts[i], cb.edge_starts[i + 1]
        s = F.embedding_bag(src[e0:e1], values[:a], bag[a - N_INPUTS:b - N_INPUTS], mode="sum",
                            per_sample_weights=wts[e0:e1])
        for act, lo, hi in seg:
            _INTO_FNS[act](s[lo - a:hi - a], values[lo:hi])
    out = values.index_select(0, torch.from_numpy(cb.out_rows.ravel()).to(device)).abs_().clamp_(max=1.0)
    return out.view(len(genomes), -1, height, width)
