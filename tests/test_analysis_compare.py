"""Paired comparisons between models and between white-box and transferred examples, on hand-built rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from advprior.analysis.compare import (
    PAIRED_COLUMNS,
    TRANSFER_GAP_COLUMNS,
    comparison_metrics,
    model_differences,
    transfer_gaps,
)
from advprior.analysis.intervals import paired_difference, ratio


def _outcomes(n=60, seed=0):
    """Three models, two eps, random flags with high_confidence => label_changed; rows shuffled."""
    rng = np.random.default_rng(seed)
    rows = []
    for model in ("deep", "shallow", "tiny"):
        for eps in (1 / 255, 8 / 255):
            correct = rng.random(n) < 0.8
            changed = rng.random(n) < (0.2 if eps < 0.01 else 0.6)
            rows.append(pd.DataFrame({
                "model": model, "index": np.arange(n), "eps": eps, "eps_255": eps * 255, "clean_correct": correct,
                "label_changed": changed, "high_confidence": changed & (rng.random(n) < 0.5),
                "adv_correct": correct & ~changed, "label": rng.integers(0, 3, n),
            }))
    return pd.concat(rows, ignore_index=True).sample(frac=1.0, random_state=1).reset_index(drop=True)


def test_model_differences_equal_hand_computation():
    df = _outcomes()
    out = model_differences(df, ["deep", "shallow", "tiny"], n_boot=300, seed=5)
    assert tuple(out.columns) == PAIRED_COLUMNS
    assert len(out) == 3 * 2 * 4  # pairs x eps x metrics
    assert list(dict.fromkeys(zip(out.model_a, out.model_b))) == [("deep", "shallow"), ("deep", "tiny"),
                                                                  ("shallow", "tiny")]
    r = out[(out.model_a == "deep") & (out.model_b == "tiny") & (out.eps == 8 / 255)].set_index("metric")
    a = df[(df.model == "deep") & (df.eps == 8 / 255)].sort_values("index")
    b = df[(df.model == "tiny") & (df.eps == 8 / 255)].sort_values("index")
    assert r.loc["label_changed_rate", "a"] == pytest.approx(a.label_changed.mean())
    assert r.loc["adv_acc", "b"] == pytest.approx(b.adv_correct.mean())
    fool_a = a.label_changed[a.clean_correct].mean()
    fool_b = b.label_changed[b.clean_correct].mean()
    assert r.loc["fooling_rate", "diff"] == pytest.approx(fool_a - fool_b)
    # the interval is the paired bootstrap of the same per-image columns, images matched by index
    ci = paired_difference((a.label_changed.to_numpy() & a.clean_correct.to_numpy(), a.clean_correct.to_numpy()),
                           (b.label_changed.to_numpy() & b.clean_correct.to_numpy(), b.clean_correct.to_numpy()),
                           ratio, n_resamples=300, seed=5)
    assert (r.loc["fooling_rate", "diff_low"], r.loc["fooling_rate", "diff_high"]) == (ci.low, ci.high)
    ci = paired_difference(a.high_confidence.to_numpy(), b.high_confidence.to_numpy(), n_resamples=300, seed=5)
    assert (r.loc["high_conf_rate", "diff_low"], r.loc["high_conf_rate", "diff_high"]) == (ci.low, ci.high)
    assert (out["n"] == 60).all() and set(out["method"]) == {"paired-bca"}
    assert (out["diff"] == out["a"] - out["b"]).all()


def test_model_differences_refuse_different_images():
    df = _outcomes()
    df = df[~((df.model == "tiny") & (df["index"] == 3))]
    with pytest.raises(ValueError, match="same images"):
        model_differences(df, n_boot=50)
    assert len(model_differences(df[df.model != "tiny"], n_boot=50)) == 8
    assert model_differences(df[df.model == "deep"], n_boot=50).empty  # one model: no pairs


def test_transfer_gaps_equal_hand_computation():
    df = _outcomes(n=40)
    tgt = df[(df.model == "shallow") & (df.eps == 8 / 255)].sort_values("index")
    rng = np.random.default_rng(3)
    clean_pred = np.where(tgt.clean_correct, tgt.label, (tgt.label + 1) % 3)
    adv_pred = np.where(rng.random(40) < 0.3, (clean_pred + 1) % 3, clean_pred)
    rows = pd.DataFrame({"source": "deep", "target": "shallow", "eps": 8 / 255, "index": tgt["index"].to_numpy(),
                         "label": tgt.label.to_numpy(), "clean_pred": clean_pred, "adv_pred": adv_pred,
                         "adv_conf": 0.5}).iloc[::-1]
    out = transfer_gaps(df, rows, n_boot=300, seed=2)
    assert tuple(out.columns) == TRANSFER_GAP_COLUMNS and len(out) == 1
    r = out.iloc[0]
    correct = tgt.clean_correct.to_numpy()
    moved = adv_pred != clean_pred
    assert r.white_box == pytest.approx(tgt.label_changed.to_numpy()[correct].mean())
    assert r.transferred == pytest.approx(moved[correct].mean())
    assert r["diff"] == pytest.approx(r.white_box - r.transferred)
    ci = paired_difference((tgt.label_changed.to_numpy() & correct, correct), (moved & correct, correct), ratio,
                           n_resamples=300, seed=2)
    assert (r.diff_low, r.diff_high, r.n) == (ci.low, ci.high, 40)
    bad = rows.assign(clean_pred=rows.label)  # says every clean image is correct: not the same run
    with pytest.raises(ValueError, match="different runs"):
        transfer_gaps(df, bad, n_boot=50)
    metrics = comparison_metrics(model_differences(df, ["deep", "shallow"], n_boot=50), out)
    assert metrics["attack/transfer/deep->shallow/eps=0.03137/fooling_rate_gap"] == pytest.approx(r["diff"])
    assert "attack/transfer/deep->shallow/eps=0.03137/fooling_rate_gap_low" in metrics
    assert "attack/paired/deep-vs-shallow/eps=0.003922/label_changed_rate_diff_high" in metrics
    assert transfer_gaps(df, rows.iloc[:0], n_boot=50).empty
