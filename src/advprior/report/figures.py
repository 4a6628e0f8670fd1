"""Report figures from outcome frames and summaries (matplotlib, Agg canvas, no pyplot global state).

Every function returns a ``matplotlib.figure.Figure``; ``save_figure`` writes it as a PNG atomically.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from advprior.analysis.categories import CATEGORIES
from advprior.utils.io import atomic_path

log = logging.getLogger(__name__)


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # attach the Agg canvas: no GUI backend, no pyplot registry
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def _select_eps(df: pd.DataFrame, eps: float | None) -> pd.DataFrame:
    available = sorted(df["eps"].unique().tolist())
    if eps is None:
        if len(available) != 1:
            raise ValueError(f"eps must be given when the frame holds several eps values, got eps=None; available: {available}")
        return df
    sel = df[np.isclose(df["eps"].to_numpy(dtype=np.float64), float(eps), rtol=1e-6, atol=1e-12)]
    if sel.empty:
        raise ValueError(f"eps={eps!r} not found in the frame; available: {available}")
    return sel


CONFIDENCE_PANELS: tuple[tuple[str, str], ...] = (
    ("high_confidence", "(a) high-confidence adversarial example"),
    ("label_changed", "(b) some adversarial example"),
    ("none", "(c) no adversarial example"),
)
"""Figure 6 panels: (a) label changed with adv top-1 > 50%, (b) label changed (includes (a)), (c) unchanged."""


def confidence_histograms(df: pd.DataFrame, eps: float | None = None, bins: int = 20) -> Figure:
    """The paper's Figure 6: histograms of the clean top-1 probability (``clean_top1_prob``) of images with
    (a) a high-confidence adversarial example, (b) some adversarial example (label changed; a superset
    of (a)), (c) none (label unchanged). Three panels, shared bins on [0, 1], counts in the titles."""
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    g = _select_eps(df, eps)
    edges = np.linspace(0.0, 1.0, bins + 1)
    changed = g["label_changed"].to_numpy(dtype=bool)
    masks = {
        "high_confidence": g["high_confidence"].to_numpy(dtype=bool),
        "label_changed": changed,
        "none": ~changed,
    }
    conf = g["clean_top1_prob"].to_numpy(dtype=np.float64)
    fig = _new_figure((12, 3.6))
    axes = fig.subplots(1, 3, sharex=True)
    eps_val = float(g["eps"].iloc[0]) if len(g) else float("nan")
    for ax, (key, title) in zip(axes, CONFIDENCE_PANELS):
        vals = conf[masks[key]]
        ax.hist(vals, bins=edges, color="tab:blue", edgecolor="white")
        ax.set_title(f"{title}\nn={len(vals)}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_xlabel("original (clean) top-1 probability")
    axes[0].set_ylabel("images")
    fig.suptitle(f"FGSM eps={eps_val * 255:.3g}/255 (of {len(g)} images)")
    return fig


def _to_hwc(img: Any) -> tuple[np.ndarray, str | None]:
    t = torch.as_tensor(img).detach().cpu().float().clamp(0, 1)
    if t.ndim != 3:
        raise ValueError(f"images_fn must return (C, H, W) images, got shape {tuple(t.shape)}")
    if t.shape[0] == 1:
        return t[0].numpy(), "gray"
    return t.permute(1, 2, 0).numpy(), None


def _name(class_names: Sequence[str] | None, cls: int) -> str:
    if class_names is None:
        return str(int(cls))
    return str(class_names[int(cls)])


def category_grid(
    df: pd.DataFrame,
    images_fn: Callable[[int], tuple[Any, Any]],
    category: str,
    n: int = 8,
    class_names: Sequence[str] | None = None,
    eps: float | None = None,
    pairs_per_row: int = 4,
) -> Figure:
    """Grid of up to ``n`` examples of one category (first ``n`` rows by dataset index): original and
    adversarial side by side, titles with true label, top-1 label and its probability.

    images_fn(index) -> (clean (C,H,W), adv (C,H,W)) in [0,1]; 1-channel images are drawn in gray.
    eps: restrict to one eps (None: all rows of ``df``).
    """
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {list(CATEGORIES)}, got {category!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    g = df if eps is None else _select_eps(df, eps)
    rows = g[g["category"].astype(str) == category].sort_values(["index", "eps"]).head(n)
    k = len(rows)
    if k == 0:
        fig = _new_figure((4, 2))
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, f"no '{category}' examples", ha="center", va="center")
        return fig
    per_row = max(1, min(pairs_per_row, k))
    nrows = -(-k // per_row)
    fig = _new_figure((2.4 * 2 * per_row, 2.7 * nrows))
    axes = np.atleast_2d(fig.subplots(nrows, 2 * per_row, squeeze=False))
    for ax in axes.ravel():
        ax.axis("off")
    for i, (_, r) in enumerate(rows.iterrows()):
        clean, adv = images_fn(int(r["index"]))
        ax_c, ax_a = axes[i // per_row, 2 * (i % per_row)], axes[i // per_row, 2 * (i % per_row) + 1]
        for ax, img, title in (
            (ax_c, clean, f"true: {_name(class_names, r['label'])}\nclean: {_name(class_names, r['clean_top1'])} "
                          f"({r['clean_top1_prob']:.2f})"),
            (ax_a, adv, f"eps={r['eps'] * 255:.3g}/255\nadv: {_name(class_names, r['adv_top1'])} "
                        f"({r['adv_top1_prob']:.2f})"),
        ):
            arr, cmap = _to_hwc(img)
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
    fig.suptitle(f"{category} ({k} shown)")
    return fig


def rate_vs_eps(
    summary_by_model: Mapping[str, pd.DataFrame],
    metrics: Sequence[str] = ("label_changed_rate", "high_conf_rate"),
    x: str = "eps_255",
) -> Figure:
    """One panel per metric of ``attack_summary`` frames: a line per model vs eps with its interval band
    (``metric_low`` .. ``metric_high``). Used for deep vs shallow and dropout comparisons."""
    if not summary_by_model:
        raise ValueError("summary_by_model must hold at least one model, got an empty mapping")
    fig = _new_figure((5 * len(metrics), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)[0])
    for ax, metric in zip(axes, metrics):
        for model, summ in summary_by_model.items():
            for col in (x, metric):
                if col not in summ.columns:
                    raise ValueError(f"summary for model {model!r} lacks column {col!r}")
            s = summ.sort_values(x)
            line = ax.plot(s[x], s[metric], marker="o", label=str(model))[0]
            if f"{metric}_low" in s.columns and f"{metric}_high" in s.columns:
                ax.fill_between(s[x], s[f"{metric}_low"], s[f"{metric}_high"], color=line.get_color(), alpha=0.2)
        ax.set_xlabel("eps (0-255 scale)" if x == "eps_255" else x)
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    return fig


def transfer_heatmap(matrix_df: pd.DataFrame, value: str = "fooling_rate") -> Figure:
    """Heatmap of a transfer matrix: a long ``transfer_matrix`` frame (pivoted on ``value``) or an already
    pivoted source x target table. Cells are annotated with their values."""
    if {"source", "target"} <= set(matrix_df.columns):
        from advprior.analysis.transfer import pivot

        table = pivot(matrix_df, value)
    else:
        table = matrix_df
    data = table.to_numpy(dtype=np.float64)
    fig = _new_figure((1.2 * data.shape[1] + 3, 1.0 * data.shape[0] + 2))
    ax = fig.subplots()
    im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(data.shape[1]), [str(c) for c in table.columns], rotation=45, ha="right")
    ax.set_yticks(range(data.shape[0]), [str(r) for r in table.index])
    ax.set_xlabel("target model")
    ax.set_ylabel("source model")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center",
                        color="white" if data[i, j] < 0.5 else "black", fontsize=9)
    fig.colorbar(im, ax=ax, label=value)
    return fig


def defense_panels(images: Sequence[Any], titles: Sequence[str], per_row: int = 3) -> Figure:
    """The paper's Figures 10-12: adversarial images titled with the base and posterior probability of
    the adversarial label (one panel each)."""
    n = len(images)
    if n == 0:
        fig = _new_figure((6, 2))
        fig.text(0.5, 0.5, "no high-confidence adversarial examples", ha="center", va="center")
        return fig
    rows = (n + per_row - 1) // per_row
    fig = _new_figure((4.2 * min(n, per_row), 4.4 * rows))
    for i, (img, title) in enumerate(zip(images, titles)):
        ax = fig.add_subplot(rows, min(n, per_row), i + 1)
        arr, cmap = _to_hwc(img)
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return fig  # constrained layout (``_new_figure``) spaces the panels



# -- activation differences (paper section 5, Figures 7 and 8) ---------------------------------------------


def activation_example(
    clean_img: Any,
    adv_img: Any,
    layers: Sequence[str],
    heatmaps: Any,
    filters: Sequence[int],
    filter_norms: Sequence[float],
    clean: tuple[int, float],
    adv: tuple[int, float],
    true_label: int | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Figures 7/8: the original, the adversarial image and one heat map per layer (``|a_adv - a|`` of the
    filter whose difference has the largest L2 norm, upsampled bilinearly to the image).

    clean_img, adv_img: ``(C, H, W)`` in [0,1]; heatmaps: ``(L, H, W)`` in activation units; filters,
    filter_norms: the chosen filter of each layer and its norm; clean, adv: (top-1 label, its probability).
    Each heat map has its own colour scale from 0 to its maximum, with a colorbar in activation units: a
    panel shows where its layer changed; the colorbars and the filter norms in the titles say how much.
    """
    maps = torch.as_tensor(heatmaps).detach().cpu().float()
    if maps.ndim != 3 or maps.shape[0] != len(layers):
        raise ValueError(f"heatmaps must be (L, H, W) with L={len(layers)} layers, got shape {tuple(maps.shape)}")
    fig = _new_figure((2.6 * (2 + len(layers)), 3.2))
    axes = fig.subplots(1, 2 + len(layers))
    truth = f"true: {_name(class_names, true_label)}\n" if true_label is not None else ""
    for ax, img, text in ((axes[0], clean_img, f"{truth}original: {_name(class_names, clean[0])} ({clean[1]:.2f})"),
                          (axes[1], adv_img, f"adversarial: {_name(class_names, adv[0])} ({adv[1]:.2f})")):
        arr, cmap = _to_hwc(img)
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1)
        ax.set_title(text, fontsize=8)
        ax.axis("off")
    for ax, layer, m, f, norm in zip(axes[2:], layers, maps, filters, filter_norms):
        top = float(m.max())
        im = ax.imshow(m.numpy(), cmap="inferno", vmin=0, vmax=top if top > 0 else 1)
        ax.set_title(f"{layer}, filter {int(f)}\n||diff|| = {float(norm):.3g}", fontsize=8)
        ax.axis("off")
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def activation_depth(summary: pd.DataFrame, model: str) -> Figure:
    """The relative change ``||a_adv - a|| / ||a||`` of ``model`` against depth: one panel per category
    (``all`` first), one line per eps (the same colour in every panel) with its 95% interval band.
    eps = 0 (no perturbation, change 0) is left out; log scale when every mean shown is positive."""
    s = summary[(summary["model"] == model) & (summary["eps"] > 0)]
    if s.empty:
        raise ValueError(f"summary has no rows with eps > 0 for model {model!r}; models: "
                         f"{sorted(summary['model'].unique())}")
    order = ["all", *CATEGORIES]
    cats = sorted(set(s["category"]), key=lambda c: (order.index(c) if c in order else len(order), c))
    colors = {eps: f"C{i % 10}" for i, eps in enumerate(sorted(s["eps"].unique()))}
    ncols = min(3, len(cats))
    nrows = -(-len(cats) // ncols)
    fig = _new_figure((4.4 * ncols, 3.6 * nrows))
    grid = fig.subplots(nrows, ncols, sharey=True, squeeze=False)
    for ax in grid.ravel()[len(cats):]:
        ax.axis("off")
    axes = grid.ravel()[:len(cats)]
    ticks = s.drop_duplicates("depth").sort_values("depth")
    positive = bool((s["rel_change_mean"] > 0).all())
    for ax, cat in zip(axes, cats):
        for eps, g in s[s["category"] == cat].groupby("eps", sort=True):
            g = g.sort_values("depth")
            ax.plot(g["depth"], g["rel_change_mean"], marker="o", ms=3, color=colors[eps], label=f"{eps * 255:.3g}/255")
            ax.fill_between(g["depth"], g["rel_change_low"], g["rel_change_high"], color=colors[eps], alpha=0.2)
        n = int(s.loc[s["category"] == cat, "n"].max())
        ax.set_title(f"{cat} (n <= {n} per eps)" if cat != "all" else f"all (n={n})", fontsize=10)
        ax.set_xticks(ticks["depth"], ticks["layer"], rotation=90, fontsize=7)
        if positive:
            ax.set_yscale("log")
    for row in grid:
        row[0].set_ylabel("||a_adv - a|| / ||a||")
    axes[0].legend(title="eps", fontsize=7)
    fig.suptitle(f"{model}: relative change of the activations by depth (95% intervals)")
    return fig


# --- fooling images (paper section 4.2) ---

def fooling_grid(
    images: Sequence[Any],
    above: Sequence[str],
    below: Sequence[str],
    per_row: int = 5,
    title: str | None = None,
) -> Figure:
    """The paper's Figure 1: fooling images in a grid, each with a caption above (the source model's
    prediction and confidence) and below (the target model's). ``images``: (C, H, W) in [0, 1]
    (1 channel: gray)."""
    if not (len(images) == len(above) == len(below)):
        raise ValueError(f"images, above and below must have the same length, got {len(images)}, {len(above)}, {len(below)}")
    if not isinstance(per_row, int) or per_row < 1:
        raise ValueError(f"per_row must be a positive int, got {per_row!r}")
    n = len(images)
    if n == 0:
        fig = _new_figure((6, 2))
        fig.text(0.5, 0.5, "no fooling images", ha="center", va="center")
        return fig
    cols = min(n, per_row)
    rows = -(-n // cols)
    fig = _new_figure((2.3 * cols, 2.9 * rows + (0.4 if title else 0)))
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.ravel():
        ax.axis("off")
    for i, (img, top, bottom) in enumerate(zip(images, above, below)):
        ax = axes[i // cols, i % cols]
        arr, cmap = _to_hwc(img)
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1)
        ax.set_title(top, fontsize=8)
        ax.text(0.5, -0.04, bottom, transform=ax.transAxes, ha="center", va="top", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
