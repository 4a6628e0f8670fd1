"""Paired comparisons of models attacked on the same images: differences of rates with paired intervals.

Two models of one attack study see the same evaluation images, so a comparison between them ("the deep net
is fooled less often than the shallow one") is a paired one: each image contributes both models' outcomes,
and the interval of the difference comes from resampling the images jointly (``intervals.paired_difference``,
a paired BCa bootstrap). That interval is narrower than the overlap of two marginal intervals when the
models tend to fail on the same images, and it is the one that answers the question.

- ``model_differences``: for every pair of models (``model_a`` before ``model_b`` in the given order) and
  every eps, ``diff = a - b`` of ``PAIRED_METRICS`` -> ``PAIRED_COLUMNS``.
- ``transfer_gaps``: for every (source, target) of the transfer rows and every eps, the target's fooling
  rate under its own white-box FGSM examples minus its fooling rate under the examples transferred from
  the source, on the same images -> ``TRANSFER_GAP_COLUMNS``.
- ``comparison_metrics``: both as flat metric names for the loggers.
"""
from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from advprior.analysis.intervals import Interval, paired_difference, ratio
from advprior.analysis.rates import format_eps

PAIRED_METRICS: dict[str, tuple[str, str | None]] = {
    # metric: (outcome column, restricting column or None), as in rates.RATE_METRICS
    "label_changed_rate": ("label_changed", None),
    "high_conf_rate": ("high_confidence", None),
    "adv_acc": ("adv_correct", None),
    "fooling_rate": ("label_changed", "clean_correct"),
}

PAIRED_COLUMNS: tuple[str, ...] = ("model_a", "model_b", "eps", "eps_255", "metric", "a", "b", "diff", "diff_low",
                                   "diff_high", "n", "method")
"""``a``, ``b``: the metric of each model; ``diff = a - b`` with its paired BCa interval; ``n``: images."""

TRANSFER_GAP_COLUMNS: tuple[str, ...] = ("source", "target", "eps", "eps_255", "metric", "white_box", "transferred",
                                         "diff", "diff_low", "diff_high", "n", "method")
"""``white_box``: the target's fooling rate under its own examples; ``transferred``: under the source's;
``diff = white_box - transferred`` with its paired BCa interval; ``n``: images."""


def _by_index(df: pd.DataFrame, what: str) -> pd.DataFrame:
    if df["index"].duplicated().any():
        raise ValueError(f"{what} has duplicate image indices")
    return df.set_index("index").sort_index()


def _same_images(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    if not a.index.equals(b.index):
        raise ValueError(f"{what} were not evaluated on the same images ({len(a)} vs {len(b)} rows, "
                         f"{len(a.index.symmetric_difference(b.index))} indices differ): a paired comparison "
                         "needs both")


def _columns(flag: np.ndarray, subset: np.ndarray | None) -> tuple[tuple[np.ndarray, ...], Any]:
    """Per-image columns and the statistic of their means: a rate, or a rate over ``subset`` (a ratio)."""
    if subset is None:
        return (flag,), (lambda m: m)
    return (flag & subset, subset), ratio


def _value(cols: tuple[np.ndarray, ...], stat: Any) -> float:
    """The statistic on all images (NaN when there are none, or its subset is empty)."""
    if cols[0].shape[0] == 0:
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(stat(*[c.mean() for c in cols]))


def _row(ci: Interval, a: float, b: float) -> dict[str, Any]:
    return {"a": a, "b": b, "diff": ci.estimate, "diff_low": ci.low, "diff_high": ci.high, "n": ci.n,
            "method": ci.method}


def model_differences(
    outcomes: pd.DataFrame, models: list[str] | None = None, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> pd.DataFrame:
    """One row per (pair of models, eps, metric) with ``PAIRED_COLUMNS`` (eps ascending).

    outcomes: the study's outcome rows (``model``, ``index``, ``eps``, ``eps_255`` and the flag columns of
    ``PAIRED_METRICS``); models: the order of the pairs (default: first appearance). ValueError if two
    models were not evaluated on the same images.
    """
    models = list(dict.fromkeys(outcomes["model"])) if models is None else list(models)
    groups = {key: _by_index(g, f"model {key[0]} at eps={key[1]}") for key, g in outcomes.groupby(["model", "eps"])}
    records = []
    for ma, mb in combinations(models, 2):
        for eps in sorted(outcomes["eps"].unique()):
            ga, gb = groups.get((ma, eps)), groups.get((mb, eps))
            if ga is None or gb is None:
                raise ValueError(f"models {ma!r} and {mb!r} do not both have outcomes at eps={eps}")
            _same_images(ga, gb, f"models {ma!r} and {mb!r} at eps={eps}")
            for metric, (col, restrict) in PAIRED_METRICS.items():
                (ca, stat), (cb, _) = (_columns(g[col].to_numpy(bool), None if restrict is None
                                                else g[restrict].to_numpy(bool)) for g in (ga, gb))
                ci = paired_difference(ca, cb, stat, n_resamples=n_boot, alpha=alpha, seed=seed)
                records.append({"model_a": ma, "model_b": mb, "eps": float(eps),
                                "eps_255": float(ga["eps_255"].iloc[0]), "metric": metric,
                                **_row(ci, _value(ca, stat), _value(cb, stat))})
    return pd.DataFrame.from_records(records, columns=list(PAIRED_COLUMNS)).astype({"n": "int64"})


def transfer_gaps(
    outcomes: pd.DataFrame, transfer_rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> pd.DataFrame:
    """One row per (source, target, eps) of ``transfer_rows`` with ``TRANSFER_GAP_COLUMNS``.

    transfer_rows: ``source, target, eps, index, label, clean_pred, adv_pred`` (the target's predictions on
    the source's adversarial images); the white-box side comes from the target's rows of ``outcomes``. Both
    fooling rates are label changes among the images the target classifies correctly when clean.
    """
    records = []
    for (src, tgt, eps), t in transfer_rows.groupby(["source", "target", "eps"], sort=False):
        t = _by_index(t, f"transfer rows {src}->{tgt} at eps={eps}")
        w = outcomes[(outcomes["model"] == tgt) & (outcomes["eps"] == eps)]
        w = _by_index(w, f"model {tgt} at eps={eps}")
        _same_images(w, t, f"the white-box ({tgt}) and transferred ({src}->{tgt}) examples at eps={eps}")
        correct = w["clean_correct"].to_numpy(bool)
        if not np.array_equal(correct, t["clean_pred"].to_numpy() == t["label"].to_numpy()):
            raise ValueError(f"transfer rows {src}->{tgt} disagree with {tgt}'s outcomes on which clean images are "
                             "correct: they come from different runs")
        cw, stat = _columns(w["label_changed"].to_numpy(bool), correct)
        ct, _ = _columns(t["adv_pred"].to_numpy() != t["clean_pred"].to_numpy(), correct)
        ci = paired_difference(cw, ct, stat, n_resamples=n_boot, alpha=alpha, seed=seed)
        row = _row(ci, _value(cw, stat), _value(ct, stat))
        row["white_box"], row["transferred"] = row.pop("a"), row.pop("b")
        records.append({"source": src, "target": tgt, "eps": float(eps), "eps_255": float(w["eps_255"].iloc[0]),
                        "metric": "fooling_rate", **row})
    out = pd.DataFrame.from_records(records, columns=list(TRANSFER_GAP_COLUMNS))
    return out.sort_values(["source", "target", "eps"], kind="stable").reset_index(drop=True).astype({"n": "int64"})


def comparison_metrics(paired: pd.DataFrame, gaps: pd.DataFrame | None = None) -> dict[str, float]:
    """``attack/paired/<a>-vs-<b>/eps=<eps>/<metric>_diff`` (+ ``_low``, ``_high``) and
    ``attack/transfer/<source>-><target>/eps=<eps>/fooling_rate_gap`` (+ ``_low``, ``_high``)."""
    out: dict[str, float] = {}
    for r in paired.itertuples(index=False):
        key = f"attack/paired/{r.model_a}-vs-{r.model_b}/eps={format_eps(r.eps)}/{r.metric}_diff"
        out[key], out[f"{key}_low"], out[f"{key}_high"] = float(r.diff), float(r.diff_low), float(r.diff_high)
    for r in ([] if gaps is None else gaps.itertuples(index=False)):
        key = f"attack/transfer/{r.source}->{r.target}/eps={format_eps(r.eps)}/{r.metric}_gap"
        out[key], out[f"{key}_low"], out[f"{key}_high"] = float(r.diff), float(r.diff_low), float(r.diff_high)
    return out
