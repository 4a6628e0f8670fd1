"""Per-image outcome rows of an attack at one eps, and their Parquet storage.

One row per (image, eps). Probabilities are softmax of the logits (float64). Perturbation sizes are in
[0,1] pixel units; ``l2`` is taken over all pixels and channels of one image.

Definitions: ``label_changed`` = adversarial top-1 != clean top-1 (not "!= true label").
``high_confidence`` = the paper's "high-confidence adversarial example" (section 4.4): the label changed
AND the adversarial top-1 probability is > ``high_conf_threshold`` (0.5: a majority of the probability
mass). ``category``: see ``advprior.analysis.categories``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from advprior.analysis.categories import CATEGORIES, categorize, categorize_frame, to_numpy
from advprior.utils.io import atomic_path

log = logging.getLogger(__name__)

CATEGORY_DTYPE = pd.CategoricalDtype(categories=list(CATEGORIES), ordered=False)

OUTCOME_DTYPES: dict[str, Any] = {
    "index": "int64",
    "path": "str",
    "eps": "float64",
    "eps_255": "float64",
    "label": "int64",
    "clean_top1": "int64",
    "clean_top1_prob": "float64",
    "clean_top2": "int64",
    "clean_top2_prob": "float64",
    "clean_true_prob": "float64",
    "clean_true_in_top5": "bool",
    "adv_top1": "int64",
    "adv_top1_prob": "float64",
    "adv_top2": "int64",
    "adv_top2_prob": "float64",
    "adv_true_prob": "float64",
    "linf": "float64",
    "l2": "float64",
    "clean_correct": "bool",
    "adv_correct": "bool",
    "label_changed": "bool",
    "high_confidence": "bool",
    "adv_label_in_clean_top5": "bool",
    "adv_label_clean_prob": "float64",
    "category": CATEGORY_DTYPE,
}
"""Column name -> dtype of an outcome frame, in column order."""

OUTCOME_COLUMNS: tuple[str, ...] = tuple(OUTCOME_DTYPES)

DERIVED_COLUMNS: tuple[str, ...] = ("high_confidence", "category")
"""Columns that depend on summary settings (``high_conf_threshold``, the conatural ``close`` matrix,
``refocus_min_prob``): the store keeps the others and ``derive_outcomes`` recomputes these."""

STORED_COLUMNS: tuple[str, ...] = tuple(c for c in OUTCOME_COLUMNS if c not in DERIVED_COLUMNS)


def _top2(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    k = min(2, probs.shape[1])
    vals, idx = probs.topk(k, dim=1)
    if k == 1:  # single-class model: there is no second guess
        return idx[:, 0], vals[:, 0], torch.full_like(idx[:, 0], -1), torch.full_like(vals[:, 0], float("nan"))
    return idx[:, 0], vals[:, 0], idx[:, 1], vals[:, 1]


def outcome_rows(
    index: Any,
    labels: Any,
    clean_logits: torch.Tensor,
    adv_logits: torch.Tensor,
    clean_images: torch.Tensor | None,
    adv_images: torch.Tensor | None,
    eps: float,
    high_conf_threshold: float = 0.5,
    close: Any = None,
    refocus_min_prob: float = 0.05,
    paths: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Outcome table for one batch at one eps.

    index, labels: (B,) ints (dataset positions, true labels). clean_logits, adv_logits: (B, C).
    clean_images, adv_images: (B, ...) in [0,1] for ``linf``/``l2`` (None for both -> NaN sizes).
    eps: [0,1] pixel units. close: optional (C, C) bool ``close[true, adv]`` for the conatural category.
    paths: optional (B,) file paths (empty strings otherwise). Returns a DataFrame with ``OUTCOME_COLUMNS``.
    """
    if not 0.0 <= float(eps) <= 1.0:
        raise ValueError(f"eps must be in [0, 1] pixel units, got {eps!r}")
    if not 0.0 <= float(high_conf_threshold) <= 1.0:
        raise ValueError(f"high_conf_threshold must be in [0, 1], got {high_conf_threshold!r}")
    clean_logits = torch.as_tensor(clean_logits).detach().cpu().double()
    adv_logits = torch.as_tensor(adv_logits).detach().cpu().double()
    if clean_logits.ndim != 2 or clean_logits.shape != adv_logits.shape:
        raise ValueError(
            f"clean_logits and adv_logits must both be (B, C), got {tuple(clean_logits.shape)} and "
            f"{tuple(adv_logits.shape)}"
        )
    b, num_classes = clean_logits.shape
    idx_np = to_numpy(index).astype(np.int64).reshape(-1)
    y = torch.as_tensor(to_numpy(labels).astype(np.int64).reshape(-1))
    if idx_np.shape[0] != b or y.shape[0] != b:
        raise ValueError(f"index and labels must have length B={b}, got {idx_np.shape[0]} and {y.shape[0]}")
    if b and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")
    if paths is None:
        path_list = [""] * b
    else:
        path_list = [str(p) for p in paths]
        if len(path_list) != b:
            raise ValueError(f"paths must have length B={b}, got {len(path_list)}")

    p_clean = clean_logits.softmax(dim=1)
    p_adv = adv_logits.softmax(dim=1)
    c1, c1p, c2, c2p = _top2(p_clean)
    a1, a1p, a2, a2p = _top2(p_adv)
    rows = torch.arange(b)
    clean_top5 = p_clean.topk(min(5, num_classes), dim=1).indices
    clean_true_in_top5 = (clean_top5 == y[:, None]).any(dim=1)
    adv_in_clean_top5 = (clean_top5 == a1[:, None]).any(dim=1)
    adv_label_clean_prob = p_clean[rows, a1]

    if (clean_images is None) != (adv_images is None):
        raise ValueError("clean_images and adv_images must both be given or both be None")
    if clean_images is None:
        linf = np.full(b, np.nan)
        l2 = np.full(b, np.nan)
    else:
        ci = torch.as_tensor(clean_images).detach().cpu().double()
        ai = torch.as_tensor(adv_images).detach().cpu().double()
        if ci.shape != ai.shape or ci.shape[0] != b:
            raise ValueError(
                f"clean_images and adv_images must have the same shape with B={b} rows, got "
                f"{tuple(ci.shape)} and {tuple(ai.shape)}"
            )
        delta = (ai - ci).reshape(b, -1)
        linf = delta.abs().amax(dim=1).numpy() if delta.shape[1] else np.zeros(b)
        l2 = delta.pow(2).sum(dim=1).sqrt().numpy()

    label_changed = a1 != c1
    cats = categorize(y, c1, a1, adv_in_clean_top5, adv_label_clean_prob, close=close,
                      refocus_min_prob=refocus_min_prob)
    data = {
        "index": idx_np,
        "path": path_list,
        "eps": np.full(b, float(eps)),
        "eps_255": np.full(b, float(eps) * 255.0),
        "label": y.numpy(),
        "clean_top1": c1.numpy(),
        "clean_top1_prob": c1p.numpy(),
        "clean_top2": c2.numpy(),
        "clean_top2_prob": c2p.numpy(),
        "clean_true_prob": p_clean[rows, y].numpy(),
        "clean_true_in_top5": clean_true_in_top5.numpy(),
        "adv_top1": a1.numpy(),
        "adv_top1_prob": a1p.numpy(),
        "adv_top2": a2.numpy(),
        "adv_top2_prob": a2p.numpy(),
        "adv_true_prob": p_adv[rows, y].numpy(),
        "linf": linf,
        "l2": l2,
        "clean_correct": (c1 == y).numpy(),
        "adv_correct": (a1 == y).numpy(),
        "label_changed": label_changed.numpy(),
        "high_confidence": (label_changed & (a1p > high_conf_threshold)).numpy(),
        "adv_label_in_clean_top5": adv_in_clean_top5.numpy(),
        "adv_label_clean_prob": adv_label_clean_prob.numpy(),
        "category": cats,
    }
    return _with_dtypes(pd.DataFrame(data))


def _with_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    # Outcome columns first, in order and with fixed dtypes (derived ones only if present); extra columns
    # (e.g. "model") are kept after them.
    cols = [c for c in OUTCOME_COLUMNS if c in df.columns or c not in DERIVED_COLUMNS]
    extra = [c for c in df.columns if c not in OUTCOME_DTYPES]
    df = df.loc[:, cols + extra]
    return df.astype({c: OUTCOME_DTYPES[c] for c in cols}).reset_index(drop=True)


def derive_outcomes(
    df: pd.DataFrame, high_conf_threshold: float = 0.5, close: Any = None, refocus_min_prob: float = 0.05
) -> pd.DataFrame:
    """``df`` with ``high_confidence`` and ``category`` (re)computed from the stored columns with these
    settings (same definitions as ``outcome_rows``); a summary setting never needs the attack rerun."""
    if not 0.0 <= float(high_conf_threshold) <= 1.0:
        raise ValueError(f"high_conf_threshold must be in [0, 1], got {high_conf_threshold!r}")
    _check_columns(df, "df", STORED_COLUMNS)
    out = df.copy()
    out["high_confidence"] = out["label_changed"].to_numpy() & (out["adv_top1_prob"].to_numpy() > high_conf_threshold)
    out["category"] = categorize_frame(out, close=close, refocus_min_prob=refocus_min_prob)
    return _with_dtypes(out)


def empty_outcomes() -> pd.DataFrame:
    """An outcome frame with no rows and the right columns and dtypes."""
    return _with_dtypes(pd.DataFrame({c: [] for c in OUTCOME_COLUMNS}))


def concat_outcomes(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate outcome frames (batches, eps values) into one with a fresh 0..N-1 index and fixed dtypes."""
    frames = [f for f in frames]
    if not frames:
        return empty_outcomes()
    for i, f in enumerate(frames):
        _check_columns(f, f"frames[{i}]")
    return _with_dtypes(pd.concat(frames, ignore_index=True))


def _check_columns(df: pd.DataFrame, what: str, required: Sequence[str] = OUTCOME_COLUMNS) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what} is missing outcome columns {missing}; required columns: {list(required)}")


def write_outcomes(df: pd.DataFrame, path: str | os.PathLike, derived: bool = True) -> Path:
    """Write an outcome frame to Parquet (pyarrow) atomically; returns ``path``. ``derived=False`` leaves out
    ``DERIVED_COLUMNS`` (the store's table: they depend on summary settings)."""
    _check_columns(df, "df", OUTCOME_COLUMNS if derived else STORED_COLUMNS)
    df = _with_dtypes(df if derived else df.drop(columns=[c for c in DERIVED_COLUMNS if c in df.columns]))
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, engine="pyarrow", index=False)
    log.debug("wrote %d outcome rows to %s", len(df), path)
    return Path(path)


def read_outcomes(path: str | os.PathLike) -> pd.DataFrame:
    """Read an outcome Parquet file; raises ValueError naming any missing stored column. Derived and extra
    columns are kept when present (``derive_outcomes`` adds the derived ones)."""
    df = pd.read_parquet(path, engine="pyarrow")
    _check_columns(df, f"outcome file {str(path)!r}", STORED_COLUMNS)
    return _with_dtypes(df)
