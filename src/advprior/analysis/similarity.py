""""Close" class pairs for the conatural category: a (C, C) bool matrix ``close[true, adv]``.

- ``hierarchy_close``: from a class-to-class tree distance (WordNet for ImageNet): close iff
  distance <= ``max_distance``.
- ``weight_similarity_close``: for data without a hierarchy, the k nearest other classes by cosine
  similarity of the classifier's last-layer weight rows. Symmetrized: ``i`` and ``j`` are close if either
  is among the other's k nearest, so ``close`` is symmetric and each class has at least k close classes.

Both return a torch bool tensor with a False diagonal (a class is not "close" to itself: an unchanged
label is never conatural anyway).
"""
from __future__ import annotations

from typing import Any

import torch


def weight_similarity_close(weight: Any, k: int = 1) -> torch.Tensor:
    """weight: (C, F) last-layer weight rows (one per class). Returns (C, C) bool, symmetric, diagonal False.

    Ties in similarity are broken by ``torch.topk`` (lowest index first on CPU in practice).
    """
    w = torch.as_tensor(weight).detach().cpu().double()
    if w.ndim != 2:
        raise ValueError(f"weight must be (C, F), got shape {tuple(w.shape)}")
    c = w.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= c - 1:
        raise ValueError(f"k must be an int in [1, C-1] = [1, {c - 1}], got {k!r}")
    wn = torch.nn.functional.normalize(w, dim=1)
    sim = wn @ wn.T
    sim.fill_diagonal_(float("-inf"))
    nearest = sim.topk(k, dim=1).indices  # (C, k)
    nn_mask = torch.zeros(c, c, dtype=torch.bool)
    nn_mask[torch.arange(c)[:, None], nearest] = True
    close = nn_mask | nn_mask.T
    close.fill_diagonal_(False)
    return close


def hierarchy_close(distance_matrix: Any, max_distance: float) -> torch.Tensor:
    """distance_matrix: (C, C) tree distances (e.g. WordNet path length). Returns ``distance <= max_distance``
    as a (C, C) bool tensor with a False diagonal."""
    d = torch.as_tensor(distance_matrix).detach().cpu()
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distance_matrix must be square (C, C), got shape {tuple(d.shape)}")
    if not max_distance >= 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance!r}")
    close = d <= max_distance
    close.fill_diagonal_(False)
    return close
