"""Where in the network an adversarial perturbation shows (paper section 5, Figures 7 and 8).

For a clean image ``x`` and its adversarial counterpart ``x_adv``, with ``a = f_l(x)`` and
``a_adv = f_l(x_adv)`` the activation of a named layer ``l`` of a ``Classifier``:

- **per-filter difference** (conv/pool layers, ``(B, F, h, w)``): ``norms[b, f] = ||a_adv[b, f] - a[b, f]||_2``
  over the ``h x w`` map; the **filter** is the argmax over ``f`` (the first one on ties, so filter 0 when
  nothing changed); its **heat map** is ``|a_adv[b, f] - a[b, f]|`` upsampled bilinearly
  (``align_corners=False``) to the image's ``H x W``, in activation units (not rescaled: figures choose
  their own colour scale). This is the paper's visualization algorithm.
- **relative change** (any named layer, fc6/fc7/fc8 included): ``||a_adv - a||_2 / ||a||_2`` over all of
  one image's activation values. Guard for ``||a|| = 0`` (a layer silent on the clean image, e.g. every
  ReLU off): the relative change is 0 when ``a_adv`` is silent too (nothing changed) and NaN when it is
  not (undefined; summaries count such rows apart instead of averaging an infinity).

Norms are computed in float64 from the activations' own dtype. ``relative_change`` and ``layer_change_batch``
take the difference inside forward hooks, so only the clean activations of a batch are held in memory.
"""
from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import FGSMSweep
from .categories import ADVERSARIAL_CATEGORIES
from .intervals import bca_interval

log = logging.getLogger(__name__)

LAYER_CHANGE_COLUMNS: tuple[str, ...] = (
    "model", "index", "eps", "eps_255", "layer", "depth", "norm_clean", "abs_change", "rel_change", "adv_top1",
    "adv_top1_prob",
)
"""Columns of the per-(model, image, eps, layer) rows that ``layer_change_batch`` returns."""


@dataclass(frozen=True)
class FilterDifference:
    """The paper's per-layer visualization for a batch of pairs (tensors on the activations' device).

    Attributes:
        norms: ``(B, F)`` float64, L2 norm of each filter's difference map.
        filter: ``(B,)`` int64, the filter with the largest norm (first on ties).
        filter_norm: ``(B,)`` float64, that filter's norm.
        heatmap: ``(B, H, W)`` float32, ``|a_adv - a|`` of that filter upsampled bilinearly to the image.
    """

    norms: torch.Tensor
    filter: torch.Tensor
    filter_norm: torch.Tensor
    heatmap: torch.Tensor


def filter_difference(clean: torch.Tensor, adv: torch.Tensor, size: tuple[int, int]) -> FilterDifference:
    """Per-filter difference of one layer's activations ``(B, F, h, w)`` (clean, adversarial), with the
    chosen filter's heat map upsampled to ``size = (H, W)``."""
    if clean.shape != adv.shape:
        raise ValueError(f"clean and adversarial activations differ in shape: {tuple(clean.shape)} vs {tuple(adv.shape)}")
    if clean.ndim != 4:
        raise ValueError(f"per-filter heat maps need (B, F, h, w) activations (a conv or pool layer); got shape "
                         f"{tuple(clean.shape)}")
    diff = adv - clean
    norms = torch.linalg.vector_norm(diff.flatten(2).double(), dim=2)
    filt = norms.argmax(dim=1)
    rows = torch.arange(diff.shape[0], device=diff.device)
    chosen = diff[rows, filt].abs().float()  # (B, h, w)
    heat = F.interpolate(chosen[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return FilterDifference(norms, filt, norms[rows, filt], heat)


def rel_change(abs_change: torch.Tensor, norm_clean: torch.Tensor) -> torch.Tensor:
    """``abs_change / norm_clean`` with the module's guard: 0 where both are 0, NaN where only the clean is 0."""
    safe = torch.where(norm_clean > 0, norm_clean, torch.ones_like(norm_clean))
    undefined = torch.where(abs_change > 0, torch.full_like(abs_change, torch.nan), torch.zeros_like(abs_change))
    return torch.where(norm_clean > 0, abs_change / safe, undefined)


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1).double(), dim=1)


def _check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    known = getattr(model, "layer_names", None)
    if known is None:
        raise ValueError(f"activation differences need a Classifier with named layers; got {type(model).__name__}")
    bad = [name for name in layers if name not in known]
    if bad:
        raise ValueError(f"layers {bad} are not named layers of this model; it has {known}")
    return list(layers)


@torch.no_grad()
def compare_pass(
    model: nn.Module,
    adv: torch.Tensor,
    clean_feats: Mapping[str, torch.Tensor],
    map_layers: Sequence[str] = (),
    map_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, FilterDifference]]:
    """Forward ``adv`` once, comparing each named layer with its clean activation inside a forward hook.

    Returns the adversarial logits ``(B, K)``, ``{layer: ||a_adv - a||_2 (B,) float64}`` for every layer of
    ``clean_feats``, and ``{layer: FilterDifference}`` for ``map_layers`` restricted to the batch rows
    ``map_rows`` (a 1-D index tensor; all rows when None), with heat maps at the size of ``adv``.
    """
    abs_change: dict[str, torch.Tensor] = {}
    maps: dict[str, FilterDifference] = {}
    size = tuple(adv.shape[-2:])

    def hook(name: str):
        def fn(_m, _inp, out):  # noqa: ANN001
            ref = clean_feats[name]
            abs_change[name] = _flat_norm(out - ref)
            if name in map_layers:
                rows = slice(None) if map_rows is None else map_rows
                maps[name] = filter_difference(ref[rows], out[rows], size)
        return fn

    handles = [model.layer(name).register_forward_hook(hook(name)) for name in clean_feats]
    try:
        logits = model(adv)
    finally:
        for h in handles:
            h.remove()
    return logits, abs_change, maps


@torch.no_grad()
def activation_differences(
    model: nn.Module, clean: torch.Tensor, adv: torch.Tensor, layers: Sequence[str] = ("conv1_2", "conv3_1", "conv5_1"),
) -> tuple[torch.Tensor, torch.Tensor, dict[str, FilterDifference]]:
    """Figures 7/8 for pairs of images ``(B, C, H, W)`` in [0,1]: clean logits ``(B, K)``, adversarial
    logits ``(B, K)`` and ``{layer: FilterDifference}`` (heat maps at ``H x W``)."""
    layers = _check_layers(model, layers)
    clean_logits, feats = model.forward_with_features(clean, layers)
    adv_logits, _, maps = compare_pass(model, adv, feats, map_layers=layers)
    return clean_logits, adv_logits, maps


@torch.no_grad()
def relative_change(
    model: nn.Module, clean: torch.Tensor, adv: torch.Tensor, layers: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """``{layer: ||a_adv - a|| / ||a||}`` ``(B,)`` float64 for ``layers`` (default: every named layer)."""
    layers = _check_layers(model, model.layer_names if layers is None else layers)
    _, feats = model.forward_with_features(clean, layers)
    _, abs_change, _ = compare_pass(model, adv, feats)
    return {name: rel_change(abs_change[name], _flat_norm(feats[name])) for name in layers}


@dataclass
class BatchExamples:
    """Figure examples found in one batch (CPU tensors; E examples, L map layers)."""

    index: torch.Tensor            # (E,) dataset indices
    clean: torch.Tensor            # (E, C, H, W) clean images in [0,1]
    adv: torch.Tensor              # (E, C, H, W) adversarial images, bit-identical to the study's
    clean_logits: torch.Tensor     # (E, K)
    adv_logits: torch.Tensor       # (E, K)
    filters: torch.Tensor          # (E, L) int64
    filter_norms: torch.Tensor     # (E, L) float64
    heatmaps: torch.Tensor         # (E, L, H, W) float32

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(vars(self))


def layer_change_batch(
    model: nn.Module,
    model_name: str,
    images: torch.Tensor,
    index: torch.Tensor,
    target: torch.Tensor | None,
    epsilons: Sequence[float],
    layers: Sequence[str],
    map_layers: Sequence[str] = (),
    example_indices: Collection[int] = (),
    figure_eps: float | None = None,
) -> tuple[pd.DataFrame, BatchExamples | None]:
    """The relative change at ``layers`` for one batch and every eps, with FGSM as the attack study makes it.

    images ``(B, C, H, W)`` in [0,1]; index ``(B,)`` dataset indices; target: the labels attacked (None:
    the model's own predictions). The adversarial images come from ``FGSMSweep(model, epsilons)`` on this
    very batch, so they are bit-identical to the study's when the batch is the same. Returns one row per
    (eps, layer, image) with ``LAYER_CHANGE_COLUMNS`` (``depth``: 1-based position of the layer in
    ``model.layer_names``) and, when the batch holds any of ``example_indices``, their Figure 7/8 data at
    ``figure_eps`` for ``map_layers`` (else None).
    """
    layers = _check_layers(model, layers)
    every = _check_layers(model, list(dict.fromkeys([*layers, *map_layers])))
    depth = {name: i + 1 for i, name in enumerate(model.layer_names)}
    advs = FGSMSweep(model, list(epsilons))(images, target)  # (K, B, C, H, W)
    with torch.no_grad():
        clean_logits, feats = model.forward_with_features(images, every)
    norm_clean = {name: _flat_norm(feats[name]) for name in layers}
    idx = index.detach().cpu().long()
    wanted_set = set(int(i) for i in example_indices)
    wanted = [i for i, v in enumerate(idx.tolist()) if v in wanted_set]
    rows_t = torch.tensor(wanted, dtype=torch.long, device=images.device)
    frames, examples = [], None
    for k, eps in enumerate(epsilons):
        is_fig = bool(wanted) and map_layers and figure_eps is not None and float(eps) == float(figure_eps)
        adv_logits, abs_change, maps = compare_pass(model, advs[k], feats, map_layers if is_fig else (),
                                                    rows_t if is_fig else None)
        probs = adv_logits.detach().cpu().double().softmax(dim=1)  # the study's expression (outcome_rows)
        top_p, top = probs.max(dim=1)
        for name in layers:
            frames.append(pd.DataFrame({
                "model": model_name, "index": idx.numpy(), "eps": float(eps), "eps_255": float(eps) * 255.0,
                "layer": name, "depth": depth[name],
                "norm_clean": norm_clean[name].cpu().numpy(), "abs_change": abs_change[name].cpu().numpy(),
                "rel_change": rel_change(abs_change[name], norm_clean[name]).cpu().numpy(),
                "adv_top1": top.numpy(), "adv_top1_prob": top_p.numpy(),
            }))
        if is_fig:
            examples = BatchExamples(
                index=idx[wanted], clean=images[rows_t].detach().cpu(), adv=advs[k][rows_t].detach().cpu(),
                clean_logits=clean_logits[rows_t].detach().cpu(), adv_logits=adv_logits[rows_t].detach().cpu(),
                filters=torch.stack([maps[n].filter for n in map_layers], 1).cpu(),
                filter_norms=torch.stack([maps[n].filter_norm for n in map_layers], 1).cpu(),
                heatmaps=torch.stack([maps[n].heatmap for n in map_layers], 1).cpu(),
            )
    df = pd.concat(frames, ignore_index=True) if frames else empty_layer_change()
    return df, examples


def empty_layer_change() -> pd.DataFrame:
    """A layer-change frame with no rows and the right dtypes."""
    dtypes = ["str", "int64", "float64", "float64", "str", "int64", "float64", "float64", "float64", "int64", "float64"]
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(LAYER_CHANGE_COLUMNS, dtypes)})


def mean_intervals(samples: Sequence[np.ndarray], n_boot: int, seed: int,
                   alpha: float = 0.05) -> list[tuple[float, float, float]]:
    """(mean, low, high) of each 1-D sample: its mean with a seeded (1 - alpha) BCa bootstrap interval
    (``advprior.analysis.intervals.bca_interval``, ``n_boot`` resamples). Fewer than 2 values: NaN bounds
    (no values: NaN mean); constant values: ``low == high == mean``."""
    out: list[tuple[float, float, float]] = []
    for v in samples:
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if v.size == 0:
            out.append((np.nan, np.nan, np.nan))
            continue
        iv = bca_interval(v, n_resamples=n_boot, alpha=alpha, seed=seed)
        out.append((float(v.mean()), iv.low, iv.high))
    return out


SUMMARY_COLUMNS: tuple[str, ...] = (
    "model", "eps", "eps_255", "category", "layer", "depth", "n", "n_undefined", "rel_change_mean",
    "rel_change_low", "rel_change_high",
)


SUMMARY_CATEGORIES: tuple[str, ...] = (*ADVERSARIAL_CATEGORIES, "unchanged")
"""The paper's four categories, then the images whose label did not change (the control group)."""


def change_summary(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                   categories: Sequence[str] = SUMMARY_CATEGORIES) -> pd.DataFrame:
    """Mean relative change per model, eps, category and layer with a 95% BCa bootstrap interval.

    ``table``: layer-change rows with a ``category`` column. Category ``all`` takes every image, then one
    group per category in ``categories`` that has rows (default: the paper's four and ``unchanged``).
    ``n`` counts the images with a defined relative change, ``n_undefined`` those without (clean activation
    zero, adversarial not: NaN, see the module doc). Intervals: ``mean_intervals`` (BCa, 95%).
    Sorted by model, eps, category (``all`` first, then ``categories`` order) and depth.
    """
    missing = {"model", "eps", "eps_255", "layer", "depth", "rel_change", "category"} - set(table.columns)
    if missing:
        raise ValueError(f"table is missing columns {sorted(missing)} needed by change_summary")
    order = ["all", *categories]
    records = []
    cat = table["category"].astype(str)
    for group_cat in order:
        sub = table if group_cat == "all" else table[cat == group_cat]
        for (model, eps), g in sub.groupby(["model", "eps"], sort=False):
            layers = list(g.groupby("layer", sort=False))
            values = [lg["rel_change"].to_numpy(dtype=np.float64) for _, lg in layers]
            finite = [v[~np.isnan(v)] for v in values]
            for (layer, lg), v, f, (m, lo, hi) in zip(layers, values, finite,
                                                      mean_intervals(finite, n_boot=n_boot, seed=seed)):
                records.append({"model": model, "eps": float(eps), "eps_255": float(lg["eps_255"].iloc[0]),
                                "category": group_cat, "layer": layer, "depth": int(lg["depth"].iloc[0]),
                                "n": int(f.size), "n_undefined": int(v.size - f.size),
                                "rel_change_mean": m, "rel_change_low": lo, "rel_change_high": hi})
    out = pd.DataFrame.from_records(records, columns=list(SUMMARY_COLUMNS))
    out["_cat"] = out["category"].map({c: i for i, c in enumerate(order)})
    out = out.sort_values(["model", "eps", "_cat", "depth"], kind="stable").drop(columns="_cat")
    return out.reset_index(drop=True)
