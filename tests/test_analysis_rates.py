"""Per-eps summaries (Wilson and BCa intervals), category counts, metric names and the transfer matrix."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from statsmodels.stats.proportion import proportion_confint

from advprior.analysis.categories import CATEGORIES
from advprior.analysis.intervals import bca_interval
from advprior.analysis.rates import attack_summary, category_counts, metric_dict
from advprior.analysis.transfer import pivot, transfer_matrix


def _frame():
    """Two eps values with hand-countable flags."""
    rows = []
    # eps 1/255: 10 images
    cc = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]  # 7 correct
    t5 = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]  # 9 in top-5
    ac = [1, 1, 1, 0, 0, 0, 0, 0, 1, 0]  # 4 adv correct
    lc = [0, 0, 0, 1, 1, 1, 1, 0, 1, 1]  # 6 changed; among correct: 4 of 7
    hc = [0, 0, 0, 1, 1, 0, 0, 0, 1, 0]  # 3 high confidence
    p2 = [.5, .5, .5, .1, .2, .6, .6, .4, .3, .7]  # mean over hc rows = (.1+.2+.3)/3
    cat = ["unchanged"] * 3 + ["true", "true", "refocused", "conatural", "unchanged", "benign", "wrong_to_wrong"]
    for i in range(10):
        rows.append(dict(eps=1 / 255, eps_255=1.0, clean_correct=bool(cc[i]), clean_true_in_top5=bool(t5[i]),
                         adv_correct=bool(ac[i]), label_changed=bool(lc[i]), high_confidence=bool(hc[i]),
                         adv_top2_prob=p2[i], category=cat[i]))
    # eps 0: 4 images, nothing changes
    for i in range(4):
        rows.append(dict(eps=0.0, eps_255=0.0, clean_correct=i < 2, clean_true_in_top5=True, adv_correct=i < 2,
                         label_changed=False, high_confidence=False, adv_top2_prob=0.1, category="unchanged"))
    return pd.DataFrame(rows)


def test_attack_summary_equals_hand_counts():
    s = attack_summary(_frame(), n_boot=200, seed=0)
    assert s["eps"].tolist() == [0.0, 1 / 255]
    r0, r1 = s.iloc[0], s.iloc[1]
    assert r0["n"] == 4 and r0["clean_acc"] == 0.5 and r0["label_changed_rate"] == 0.0
    assert r0["label_changed_rate_low"] == 0.0
    assert math.isnan(r0["mean_second_prob_high_conf"]) and r0["n_high_conf"] == 0
    assert r1["n"] == 10 and r1["n_clean_correct"] == 7 and r1["n_high_conf"] == 3
    assert r1["clean_acc"] == pytest.approx(0.7)
    assert r1["clean_top5_acc"] == pytest.approx(0.9)
    assert r1["adv_acc"] == pytest.approx(0.4)
    assert r1["label_changed_rate"] == pytest.approx(0.6)
    assert r1["high_conf_rate"] == pytest.approx(0.3)
    assert r1["fooling_rate"] == pytest.approx(4 / 7)
    assert r1["mean_second_prob_high_conf"] == pytest.approx(0.2)
    # rates: Wilson intervals of (successes, trials), as statsmodels computes them
    for m, k, n in (("clean_acc", 7, 10), ("clean_top5_acc", 9, 10), ("adv_acc", 4, 10),
                    ("label_changed_rate", 6, 10), ("high_conf_rate", 3, 10), ("fooling_rate", 4, 7)):
        assert (r1[f"{m}_low"], r1[f"{m}_high"]) == pytest.approx(proportion_confint(k, n, method="wilson"), abs=1e-12)
    # the mean second-best probability: BCa over the three high-confidence rows, with the summary's seed
    ci = bca_interval([0.1, 0.2, 0.3], n_resamples=200, seed=0)
    assert (r1["mean_second_prob_high_conf_low"], r1["mean_second_prob_high_conf_high"]) == (ci.low, ci.high)
    assert ci.low < 0.2 < ci.high
    assert math.isnan(r0["mean_second_prob_high_conf_low"])  # no high-confidence rows: no interval
    assert r0["clean_acc_low"] > 0 and r0["label_changed_rate_high"] > 0  # Wilson: 0/4 is not a certain 0
    assert s["n"].dtype == np.int64


def test_category_counts_and_metric_dict():
    counts = category_counts(_frame())
    assert list(counts.columns) == list(CATEGORIES)
    assert counts.loc[0.0].tolist() == [0, 0, 0, 0, 0, 4]
    assert counts.loc[1 / 255].to_dict() == {"true": 2, "refocused": 1, "conatural": 1, "benign": 1,
                                            "wrong_to_wrong": 1, "unchanged": 4}
    s = attack_summary(_frame().assign(eps=lambda d: d["eps"] * 0.85, eps_255=lambda d: d["eps_255"] * 0.85),
                       n_boot=50)
    md = metric_dict(s)
    assert md["attack/eps=0.003333/adv_acc"] == pytest.approx(0.4)
    assert md["attack/eps=0/n"] == 4 and isinstance(md["attack/eps=0/n"], int)
    assert "attack/eps=0.003333/label_changed_rate_low" in md
    assert not any(k.endswith("/eps_255") for k in md)
    assert set(metric_dict(s, prefix="val")) == {k.replace("attack/", "val/", 1) for k in md}


def test_transfer_matrix_hand_case():
    # target probabilities on adversarial images (as logits = log p)
    adv_p = torch.tensor([[0.2, 0.8, 0.0, 0.0], [0.1, 0.6, 0.3, 0.0], [0.7, 0.1, 0.2, 0.0], [0.9, 0.1, 0.0, 0.0]])
    adv_logits = adv_p.add(1e-12).log()
    labels = torch.tensor([0, 1, 2, 3])
    clean_preds = torch.tensor([0, 1, 2, 0])  # correct on 0, 1, 2
    # adv top-1 = [1, 1, 0, 0]: among the correct, rows 0 and 2 changed -> 2/3 fooled
    results = {
        ("vgg19", "vgg11"): {"labels": labels, "clean_preds": clean_preds, "adv_logits": adv_logits},
        ("vgg19", "vgg19"): (labels, labels, adv_logits),  # all correct; rows 0, 2, 3 change -> 3/4
    }
    m = transfer_matrix(results, n_boot=200, seed=0)
    assert m["source"].tolist() == ["vgg19", "vgg19"] and m["target"].tolist() == ["vgg11", "vgg19"]
    r = m.iloc[0]
    assert r["n"] == 4 and r["n_correct"] == 3
    assert r["fooling_rate"] == pytest.approx(2 / 3)
    assert r["adv_acc"] == pytest.approx(0.25)
    assert r["mean_confidence"] == pytest.approx((0.8 + 0.6 + 0.7 + 0.9) / 4)
    assert r["mean_confidence_fooled"] == pytest.approx((0.8 + 0.7) / 2)
    assert (r["fooling_rate_low"], r["fooling_rate_high"]) == pytest.approx(proportion_confint(2, 3, method="wilson"))
    assert (r["adv_acc_low"], r["adv_acc_high"]) == pytest.approx(proportion_confint(1, 4, method="wilson"))
    ci = bca_interval(adv_logits.double().softmax(1).amax(1), n_resamples=200, seed=0)
    assert (r["mean_confidence_low"], r["mean_confidence_high"]) == (ci.low, ci.high)
    assert m.iloc[1]["fooling_rate"] == pytest.approx(0.75)
    table = pivot(m)
    assert table.loc["vgg19", "vgg11"] == pytest.approx(2 / 3) and table.shape == (1, 2)
    with pytest.raises(ValueError, match="adv_logits"):
        transfer_matrix({("a", "b"): {"labels": labels, "clean_preds": clean_preds}})
    with pytest.raises(ValueError, match="value"):
        pivot(m, "nope")


def test_transfer_matrix_from_predictions_equals_from_logits():
    from advprior.analysis.transfer import transfer_matrix
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (60,), generator=g)
    clean = torch.randint(0, 5, (60,), generator=g)
    logits = torch.randn(60, 5, generator=g, dtype=torch.float64)
    conf, pred = logits.softmax(1).max(1)
    a = transfer_matrix({("s", "t"): {"labels": labels, "clean_preds": clean, "adv_logits": logits}}, n_boot=200)
    b = transfer_matrix({("s", "t"): {"labels": labels, "clean_preds": clean, "adv_pred": pred, "adv_conf": conf}},
                        n_boot=200)
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="one length"):
        transfer_matrix({("s", "t"): {"labels": labels, "clean_preds": clean, "adv_pred": pred[:3], "adv_conf": conf}})
