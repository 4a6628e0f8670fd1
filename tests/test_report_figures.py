"""Report figures: Figure 6 panel counts read back from the artists, grids, curves, heatmaps, PNG files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import AxesImage

from advprior.analysis.outcomes import concat_outcomes, outcome_rows
from advprior.analysis.rates import attack_summary
from advprior.analysis.transfer import pivot, transfer_matrix
from advprior.report.figures import (
    category_grid,
    confidence_histograms,
    rate_vs_eps,
    save_figure,
    transfer_heatmap,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _outcomes(n=600, c=10, seed=0, eps_list=(1 / 255, 4 / 255)):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=gen)
    clean = torch.randn(n, c, generator=gen) * 3
    clean[torch.arange(n), labels] += 2.0
    frames = []
    for eps in eps_list:
        adv = clean + torch.randn(n, c, generator=gen) * (eps * 255)
        frames.append(outcome_rows(torch.arange(n), labels, clean, adv, None, None, eps=eps))
    return concat_outcomes(frames)


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_confidence_histogram_counts_equal_frame_counts(tmp_path):
    df = _outcomes()
    fig = confidence_histograms(df, eps=4 / 255, bins=10)
    g = df[np.isclose(df["eps"], 4 / 255)]
    expected = [int(g["high_confidence"].sum()), int(g["label_changed"].sum()), int((~g["label_changed"]).sum())]
    assert expected[0] > 0 and expected[2] > 0 and expected[0] < expected[1]
    axes = fig.axes
    assert len(axes) == 3
    for ax, n in zip(axes, expected):
        heights = [p.get_height() for p in ax.patches]
        assert len(heights) == 10
        assert sum(heights) == n
        assert f"n={n}" in ax.get_title()
        lefts = sorted(p.get_x() for p in ax.patches)
        np.testing.assert_allclose(lefts, np.linspace(0, 0.9, 10), atol=1e-12)  # shared bins on [0, 1]
    # histogram of the clean top-1 probability, bin by bin for panel (b)
    counts, _ = np.histogram(g.loc[g["label_changed"], "clean_top1_prob"], bins=np.linspace(0, 1, 11))
    assert [p.get_height() for p in axes[1].patches] == counts.tolist()
    out = save_figure(fig, tmp_path / "figs" / "figure6.png")
    _assert_png(out)
    assert not list(out.parent.glob(".*.tmp"))


def test_confidence_histograms_eps_selection():
    df = _outcomes()
    with pytest.raises(ValueError, match="available"):
        confidence_histograms(df, eps=0.5)
    with pytest.raises(ValueError, match="eps must be given"):
        confidence_histograms(df)
    single = df[df["eps"] == df["eps"].min()]
    fig = confidence_histograms(single)
    assert sum(p.get_height() for ax in fig.axes[1:] for p in ax.patches) == len(single)


@pytest.mark.parametrize("channels", [1, 3])
def test_category_grid_draws_pairs(tmp_path, channels):
    df = _outcomes(eps_list=(4 / 255,))
    gen = torch.Generator().manual_seed(1)
    imgs = torch.rand(600, channels, 8, 8, generator=gen)

    def images_fn(i):
        return imgs[i], (imgs[i] + 0.05).clamp(0, 1)

    names = [f"class{k}" for k in range(10)]
    cat = df["category"].astype(str).value_counts().index[0]
    k = min(5, int((df["category"].astype(str) == cat).sum()))
    fig = category_grid(df, images_fn, cat, n=5, class_names=names)
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2 * k
    assert isinstance(images[0], AxesImage)
    arr = images[0].get_array()
    assert arr.ndim == (2 if channels == 1 else 3)
    titles = " ".join(ax.get_title() for ax in fig.axes)
    first = df[df["category"].astype(str) == cat].sort_values("index").iloc[0]
    assert f"clean: {names[first['clean_top1']]} ({first['clean_top1_prob']:.2f})" in titles
    _assert_png(save_figure(fig, tmp_path / "grid.png"))
    empty = category_grid(df.iloc[:0], images_fn, "benign")
    assert not [im for ax in empty.axes for im in ax.get_images()]
    with pytest.raises(ValueError, match="category"):
        category_grid(df, images_fn, "nonsense")


def test_rate_vs_eps_and_transfer_heatmap(tmp_path):
    deep = attack_summary(_outcomes(seed=0, eps_list=(1 / 255, 2 / 255, 4 / 255)), n_boot=50)
    shallow = attack_summary(_outcomes(seed=1, eps_list=(1 / 255, 2 / 255, 4 / 255)), n_boot=50)
    fig = rate_vs_eps({"vgg19": deep, "vgg11": shallow})
    assert len(fig.axes) == 2
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["vgg19", "vgg11"]
    np.testing.assert_allclose(lines[0].get_ydata(), deep["label_changed_rate"])
    np.testing.assert_allclose(lines[0].get_xdata(), [1, 2, 4])
    _assert_png(save_figure(fig, tmp_path / "rates.png"))

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (50,), generator=gen)
    results = {(s, t): {"labels": labels, "clean_preds": labels, "adv_logits": torch.randn(50, 5, generator=gen)}
               for s in ("a", "b") for t in ("a", "b", "c")}
    m = transfer_matrix(results, n_boot=50)
    fig = transfer_heatmap(m)
    data = fig.axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(data), pivot(m).to_numpy())
    _assert_png(save_figure(fig, tmp_path / "transfer.png"))
    with pytest.raises(ValueError, match="summary_by_model"):
        rate_vs_eps({})


def test_defense_panels_draw_without_warnings():
    import warnings

    import torch

    from advprior.report.figures import defense_panels, save_figure
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = defense_panels([torch.rand(3, 16, 16) for _ in range(4)], ["a\nb"] * 4, per_row=3)
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            save_figure(fig, f"{d}/p.png")
