"""Cross-model scoring of fooling images (the paper's Figure 1): every elite evolved on a source model is
scored by the source and by every other model; the summary says how often the top label transfers and
how confident each model is, with 95% intervals.

Intervals (``advprior.analysis.intervals``): Wilson score for rates, seeded BCa bootstrap for means.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..analysis.intervals import bca_interval, wilson_interval
from ..attacks.base import eval_mode

SCORE_COLUMNS = ("source", "encoding", "bin_class", "scored_by", "top1", "top1_prob", "bin_class_prob")


def model_probabilities(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Softmax probabilities ``(N, classes)`` (CPU, float32) of ``images`` ``(N, C, H, W)`` in [0, 1],
    computed on the model's device in batches, in eval mode."""
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode(), eval_mode(model):
        for lo in range(0, len(images), batch_size):
            out.append(torch.softmax(model(images[lo:lo + batch_size].to(device)), dim=1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def score_elites(source: str, encoding: str, images: torch.Tensor, bins: Sequence[int],
                 models: Mapping[str, torch.nn.Module], batch_size: int = 256) -> pd.DataFrame:
    """One row per elite and scoring model (``SCORE_COLUMNS``): each model's top-1 label and probability
    and its probability of the elite's bin class. ``images[i]`` is the elite of class ``bins[i]``."""
    bins_t = torch.as_tensor(list(bins), dtype=torch.long)
    frames = []
    for name, model in models.items():
        probs = model_probabilities(model, images, batch_size)
        if len(bins_t) and probs.shape[1] <= int(bins_t.max()):
            raise ValueError(f"model {name!r} has {probs.shape[1]} classes but the elites of {source!r} have bin "
                             f"class {int(bins_t.max())}; fooling images are scored in one label space")
        top_p, top = probs.max(1) if len(probs) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
        frames.append(pd.DataFrame({
            "source": source, "encoding": encoding, "bin_class": bins_t.numpy(), "scored_by": name,
            "top1": top.numpy(), "top1_prob": top_p.numpy(),
            "bin_class_prob": probs.gather(1, bins_t[:, None]).squeeze(1).numpy() if len(probs) else np.zeros(0),
        }))
    return pd.concat(frames, ignore_index=True)[list(SCORE_COLUMNS)]


def fooling_summary(scores: pd.DataFrame, thresholds: Sequence[float] = (0.5, 0.99), n_resamples: int = 2000,
                    seed: int = 0) -> pd.DataFrame:
    """One row per (source, target != source, encoding) of a ``score_elites`` frame.

    Columns: ``n`` (elites), ``source_conf_mean`` (the source's mean top-1 probability), ``transfer_rate``
    (share of elites whose target top-1 equals the source's top-1; Wilson interval), ``target_conf_mean``
    (the target's mean top-1 probability), ``target_bin_prob_mean`` (the target's mean probability of the bin
    class), each mean with a BCa interval (``_low``, ``_high``), and ``share_above_<t>``: the share of bins
    whose elite's bin-class probability on the source exceeds ``t``.
    """
    rows = []
    for (source, encoding), g in scores.groupby(["source", "encoding"], sort=True):
        src = g[g["scored_by"] == source].set_index("bin_class").sort_index()
        for target, t in g[g["scored_by"] != source].groupby("scored_by", sort=True):
            t = t.set_index("bin_class").reindex(src.index)
            rec: dict = {"source": source, "target": target, "encoding": encoding, "n": len(src)}
            rec["source_conf_mean"], rec["source_conf_mean_low"], rec["source_conf_mean_high"] = _mean(
                src["top1_prob"], n_resamples, seed)
            same = int((t["top1"].to_numpy() == src["top1"].to_numpy()).sum())
            rec["transfer_rate"], rec["transfer_rate_low"], rec["transfer_rate_high"] = (
                float(v) for v in wilson_interval(same, len(src)))
            for name, vals in (("target_conf_mean", t["top1_prob"]), ("target_bin_prob_mean", t["bin_class_prob"])):
                rec[name], rec[f"{name}_low"], rec[f"{name}_high"] = _mean(vals, n_resamples, seed)
            for th in thresholds:
                rec[f"share_above_{th:g}"] = float((src["bin_class_prob"] > th).mean()) if len(src) else float("nan")
            rows.append(rec)
    stats = ("source_conf_mean", "transfer_rate", "target_conf_mean", "target_bin_prob_mean")
    columns = ["source", "target", "encoding", "n", *(f"{s}{e}" for s in stats for e in ("", "_low", "_high")),
               *(f"share_above_{th:g}" for th in thresholds)]
    return pd.DataFrame(rows, columns=columns)  # the columns even when no target scores (no rows)


def _mean(values, n_resamples: int, seed: int) -> tuple[float, float, float]:
    """(mean, low, high): the mean with its seeded 95% BCa interval (``bca_interval``)."""
    iv = bca_interval(np.asarray(values, dtype=np.float64), n_resamples=n_resamples, seed=seed)
    return iv.estimate, iv.low, iv.high
