"""Cross-model scoring of elites and the summary's rates and intervals, against direct computations."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from advprior.fooling.scoring import SCORE_COLUMNS, fooling_summary, score_elites
from advprior.models.classifier import Classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(seed: int, classes: int = 5) -> Classifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, classes))
    return Classifier(net, [0.4] * 3, [0.3] * 3, {}, classes).freeze()


def test_cross_model_scores_equal_a_direct_computation():
    models = {"a": tiny_model(0), "b": tiny_model(1)}
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    bins = [0, 2, 3, 4]  # images[i] is the elite of class bins[i]
    df = score_elites("a", "cppn", images, bins, models, batch_size=3)
    assert list(df.columns) == list(SCORE_COLUMNS) and len(df) == 8
    for name, model in models.items():
        rows = df[df["scored_by"] == name]
        assert rows["bin_class"].tolist() == bins and (rows["source"] == "a").all() and (rows["encoding"] == "cppn").all()
        for (_, r), img, k in zip(rows.iterrows(), images, bins):
            with torch.no_grad():
                p = torch.softmax(model(img[None]), dim=1)[0]  # one image at a time
            assert r["top1"] == int(p.argmax())
            assert r["top1_prob"] == pytest.approx(float(p.max()), abs=1e-6)
            assert r["bin_class_prob"] == pytest.approx(float(p[k]), abs=1e-6)
    with pytest.raises(ValueError, match="one label space"):
        score_elites("a", "cppn", images, bins, {"c": tiny_model(3, classes=3)})


def scores_frame() -> pd.DataFrame:
    """Two encodings of source s (5 bins), scored by s and two targets, with known agreements."""
    rows = []
    src_top = [0, 1, 2, 3, 3]
    src_prob = [0.999, 0.995, 0.6, 0.4, 0.2]
    for enc in ("cppn", "direct"):
        for k in range(5):
            rows.append(("s", enc, k, "s", src_top[k], src_prob[k], src_prob[k] if src_top[k] == k else 0.1))
            rows.append(("s", enc, k, "t", src_top[k] if k < 2 else 4, 0.5 + 0.1 * k, 0.3))  # agrees on 2 of 5
            rows.append(("s", enc, k, "u", 9, 0.7, 0.0))  # agrees on none
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def test_summary_rates_and_intervals_equal_hand_computations():
    summary = fooling_summary(scores_frame(), thresholds=(0.5, 0.99), n_resamples=500, seed=0)
    assert len(summary) == 4 and set(summary["target"]) == {"t", "u"}
    r = summary[(summary["target"] == "t") & (summary["encoding"] == "cppn")].iloc[0]
    assert r["n"] == 5
    assert r["transfer_rate"] == pytest.approx(2 / 5)
    # Wilson score interval, closed form
    n, p, z = 5, 2 / 5, 1.959963984540054
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (r["transfer_rate_low"], r["transfer_rate_high"]) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert r["source_conf_mean"] == pytest.approx(np.mean([0.999, 0.995, 0.6, 0.4, 0.2]))
    assert r["target_conf_mean"] == pytest.approx(0.7)
    assert r["target_bin_prob_mean"] == pytest.approx(0.3)  # constant: a degenerate interval
    assert r["target_bin_prob_mean_low"] == r["target_bin_prob_mean_high"] == pytest.approx(0.3)
    for col in ("source_conf_mean", "target_conf_mean"):
        assert r[f"{col}_low"] <= r[col] <= r[f"{col}_high"]
    # the share of bins whose elite's bin-class probability on the source exceeds 0.5 / 0.99
    assert r["share_above_0.5"] == pytest.approx(3 / 5) and r["share_above_0.99"] == pytest.approx(2 / 5)
    u = summary[(summary["target"] == "u") & (summary["encoding"] == "direct")].iloc[0]
    assert u["transfer_rate"] == 0 and u["transfer_rate_low"] == 0 and u["transfer_rate_high"] > 0


def test_fooling_grid_draws_captions_above_and_below():
    from advprior.report.figures import fooling_grid
    imgs = [torch.rand(1, 6, 6), torch.rand(3, 6, 6), torch.rand(3, 6, 6)]
    fig = fooling_grid(imgs, ["a: 1 (0.99)", "a: 2 (0.50)", "a: 3 (0.70)"], ["b: 1 (0.20)", "b: 4 (0.90)", "b: 3 (0.10)"],
                       per_row=2, title="t")
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 3 and [ax.get_title() for ax in axes] == ["a: 1 (0.99)", "a: 2 (0.50)", "a: 3 (0.70)"]
    assert [ax.texts[0].get_text() for ax in axes] == ["b: 1 (0.20)", "b: 4 (0.90)", "b: 3 (0.10)"]
    assert fooling_grid([], [], []).texts  # an empty grid says so
    with pytest.raises(ValueError, match="same length"):
        fooling_grid(imgs, ["x"], ["y"])
