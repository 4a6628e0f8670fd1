"""Per-eps attack summaries (rates with Wilson intervals, a mean with a BCa interval) and category counts.

Intervals come from ``advprior.analysis.intervals``: every rate (accuracies, label-changed,
high-confidence and fooling rates) gets a Wilson score interval; ``mean_second_prob_high_conf``, a mean of
probabilities, gets a seeded BCa bootstrap interval (``n_boot`` resamples).
"""
from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from advprior.analysis.categories import CATEGORIES
from advprior.analysis.intervals import bca_interval, rate_interval

log = logging.getLogger(__name__)

RATE_METRICS: tuple[tuple[str, str, str | None], ...] = (
    # (summary name, outcome column, restricting column or None)
    ("clean_acc", "clean_correct", None),
    ("clean_top5_acc", "clean_true_in_top5", None),
    ("adv_acc", "adv_correct", None),
    ("label_changed_rate", "label_changed", None),
    ("high_conf_rate", "high_confidence", None),
    ("fooling_rate", "label_changed", "clean_correct"),
    ("mean_second_prob_high_conf", "adv_top2_prob", "high_confidence"),
)
"""Metrics of ``attack_summary``: the mean of a column, optionally over the rows where another is True."""

MEAN_METRICS = frozenset({"mean_second_prob_high_conf"})
"""The metrics of ``RATE_METRICS`` that are means of numbers (BCa interval), not rates (Wilson interval)."""


def attack_summary(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """One row per eps (ascending) of an outcome frame.

    Columns: ``eps``, ``eps_255``, ``n``, ``n_clean_correct``, ``n_high_conf``, then for each metric
    ``m`` in ``RATE_METRICS`` the columns ``m``, ``m_low``, ``m_high``: the (1 - alpha) Wilson interval of
    a rate, the BCa interval (``n_boot`` resamples, ``seed``) of ``mean_second_prob_high_conf``; NaN
    bounds where the subset is empty (or holds one value). ``fooling_rate`` = label-changed rate among
    clean-correct images; ``mean_second_prob_high_conf`` = mean ``adv_top2_prob`` over high-confidence
    rows (NaN if none).
    """
    needed = {"eps", "eps_255"} | {col for _, col, _ in RATE_METRICS} | {r for _, _, r in RATE_METRICS if r}
    missing = sorted(needed - set(df.columns))
    if missing:
        raise ValueError(f"df is missing columns {missing} needed by attack_summary")
    records = []
    for eps, g in df.groupby("eps", sort=True):
        rec: dict[str, Any] = {
            "eps": float(eps),
            "eps_255": float(g["eps_255"].iloc[0]),
            "n": int(len(g)),
            "n_clean_correct": int(g["clean_correct"].sum()),
            "n_high_conf": int(g["high_confidence"].sum()),
        }
        for name, col, restrict in RATE_METRICS:
            vals = g[col] if restrict is None else g.loc[g[restrict].astype(bool), col]
            ci = (bca_interval(vals.to_numpy(), n_resamples=n_boot, alpha=alpha, seed=seed) if name in MEAN_METRICS
                  else rate_interval(vals.to_numpy(), alpha=alpha))
            rec[name], rec[f"{name}_low"], rec[f"{name}_high"] = ci.estimate, ci.low, ci.high
        records.append(rec)
    cols = ["eps", "eps_255", "n", "n_clean_correct", "n_high_conf"]
    for name, _, _ in RATE_METRICS:
        cols += [name, f"{name}_low", f"{name}_high"]
    out = pd.DataFrame.from_records(records, columns=cols)
    return out.astype({"n": "int64", "n_clean_correct": "int64", "n_high_conf": "int64"})


def category_counts(df: pd.DataFrame) -> pd.DataFrame:
    """eps (index, ascending) x category (columns in ``CATEGORIES`` order, all present) int64 counts."""
    for col in ("eps", "category"):
        if col not in df.columns:
            raise ValueError(f"df is missing column {col!r} needed by category_counts")
    cats = pd.Categorical(df["category"].astype(str), categories=list(CATEGORIES))
    if cats.isna().any():
        bad = sorted(set(df["category"].astype(str)) - set(CATEGORIES))
        raise ValueError(f"df['category'] holds unknown categories {bad}; allowed: {list(CATEGORIES)}")
    counts = pd.crosstab(df["eps"].to_numpy(), cats, dropna=False)
    counts = counts.reindex(columns=list(CATEGORIES), fill_value=0).sort_index()
    counts.index.name = "eps"
    counts.columns.name = "category"
    return counts.astype("int64")


def format_eps(eps: float) -> str:
    """eps as used in metric names: 4 significant digits (0.85/255 -> '0.003333')."""
    return f"{float(eps):.4g}"


def metric_dict(summary: pd.DataFrame, prefix: str = "attack") -> dict[str, float]:
    """Flatten an ``attack_summary`` into ``{f"{prefix}/eps={eps:.4g}/{column}": value}`` for loggers.

    Every column but ``eps`` and ``eps_255`` is included; counts as int, rates as float (NaN kept).
    """
    if "eps" not in summary.columns:
        raise ValueError("summary must have an 'eps' column (an attack_summary frame)")
    out: dict[str, float] = {}
    for _, row in summary.iterrows():
        key = f"{prefix}/eps={format_eps(row['eps'])}"
        for col in summary.columns:
            if col in ("eps", "eps_255"):
                continue
            val = row[col]
            out[f"{key}/{col}"] = int(val) if col == "n" or col.startswith("n_") else float(val)
    return out
