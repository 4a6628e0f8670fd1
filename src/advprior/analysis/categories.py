"""The paper's categories of FGSM outcomes (section 4.3), with operational definitions.

Every (image, eps) row gets exactly one category. With ``y`` the true label, ``c`` the clean top-1,
``a`` the adversarial top-1, "correct" meaning top-1 == ``y`` and "label changed" meaning ``a != c``:

- ``benign``: clean prediction wrong, adversarial prediction correct (``c != y``, ``a == y``).
- ``conatural``: the clean prediction was correct, the label changed, and the adversarial label is
  "close" to the true label: ``close[y, a]`` is True in a (C, C) bool matrix. For ImageNet the matrix
  comes from the WordNet hierarchy (tree distance <= a maximum distance, see
  ``similarity.hierarchy_close``); for data without a hierarchy, from the nearest classes by cosine
  similarity of the classifier's last-layer weight rows (``similarity.weight_similarity_close``).
  Without a ``close`` matrix no row is conatural.
- ``refocused``: clean prediction correct, label changed, not conatural, and the adversarial label was
  already in the clean top-5 with clean probability >= ``refocus_min_prob`` (default 0.05): the network
  moved its attention to a second object it had already seen in the image.
- ``true``: the remaining label changes of correctly classified images (true adversarial).
- ``wrong_to_wrong``: the label changed on an image the model already got wrong, to a still-wrong label
  (``c != y``, ``a != c``, ``a != y``).
- ``unchanged``: the label did not change (``a == c``), whether or not it was correct.

The checks are applied in that order of precedence (conatural before refocused before true), so the six
categories partition the rows.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

CATEGORIES: tuple[str, ...] = ("true", "refocused", "conatural", "benign", "wrong_to_wrong", "unchanged")
"""All categories, in report order: the paper's four adversarial kinds, then the two non-adversarial ones."""

ADVERSARIAL_CATEGORIES: tuple[str, ...] = ("true", "refocused", "conatural", "benign")
"""The paper's four categories (section 4.3)."""


def to_numpy(x: Any) -> np.ndarray:
    """Tensor (any device) or array-like -> numpy array (no copy when already numpy on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def categorize(
    labels: Any,
    clean_top1: Any,
    adv_top1: Any,
    adv_label_in_clean_top5: Any,
    adv_label_clean_prob: Any,
    close: Any = None,
    refocus_min_prob: float = 0.05,
) -> np.ndarray:
    """Category of each row, vectorized.

    labels, clean_top1, adv_top1: (B,) int class ids. adv_label_in_clean_top5: (B,) bool (the adversarial
    top-1 was among the clean top-5). adv_label_clean_prob: (B,) float, clean softmax probability of the
    adversarial top-1. close: optional (C, C) bool matrix, ``close[true, adv]``; None means nothing is
    conatural. Tensors or arrays. Returns a (B,) numpy object array of strings from ``CATEGORIES``.
    """
    if not 0.0 <= float(refocus_min_prob) <= 1.0:
        raise ValueError(f"refocus_min_prob must be in [0, 1], got {refocus_min_prob!r}")
    y = to_numpy(labels).astype(np.int64).reshape(-1)
    c = to_numpy(clean_top1).astype(np.int64).reshape(-1)
    a = to_numpy(adv_top1).astype(np.int64).reshape(-1)
    in5 = to_numpy(adv_label_in_clean_top5).astype(bool).reshape(-1)
    p_adv_clean = to_numpy(adv_label_clean_prob).astype(np.float64).reshape(-1)
    n = y.shape[0]
    for name, arr in (("clean_top1", c), ("adv_top1", a), ("adv_label_in_clean_top5", in5),
                      ("adv_label_clean_prob", p_adv_clean)):
        if arr.shape[0] != n:
            raise ValueError(f"{name} must have the same length as labels ({n}), got {arr.shape[0]}")

    clean_correct = c == y
    changed = a != c
    if close is None:
        is_close = np.zeros(n, dtype=bool)
    else:
        close_np = to_numpy(close).astype(bool)
        if close_np.ndim != 2 or close_np.shape[0] != close_np.shape[1]:
            raise ValueError(f"close must be a square (C, C) bool matrix, got shape {close_np.shape}")
        num_classes = close_np.shape[0]
        if n and (max(y.max(), a.max()) >= num_classes or min(y.min(), a.min()) < 0):
            raise ValueError(f"close has {num_classes} classes but labels/adv_top1 hold ids outside [0, {num_classes})")
        is_close = close_np[y, a] if n else np.zeros(0, dtype=bool)

    adv_from_correct = clean_correct & changed
    conatural = adv_from_correct & is_close
    refocused = adv_from_correct & ~is_close & in5 & (p_adv_clean >= refocus_min_prob)
    true_adv = adv_from_correct & ~conatural & ~refocused
    benign = ~clean_correct & (a == y)  # implies changed, since c != y
    wrong_to_wrong = ~clean_correct & changed & (a != y)

    out = np.full(n, "unchanged", dtype=object)
    out[wrong_to_wrong] = "wrong_to_wrong"
    out[benign] = "benign"
    out[true_adv] = "true"
    out[refocused] = "refocused"
    out[conatural] = "conatural"
    return out


def categorize_frame(df: Any, close: Any = None, refocus_min_prob: float = 0.05) -> np.ndarray:
    """Recompute categories from an outcome DataFrame (e.g. with another ``close`` matrix or threshold)."""
    return categorize(
        df["label"].to_numpy(), df["clean_top1"].to_numpy(), df["adv_top1"].to_numpy(),
        df["adv_label_in_clean_top5"].to_numpy(), df["adv_label_clean_prob"].to_numpy(),
        close=close, refocus_min_prob=refocus_min_prob,
    )
