"""Outcome rows: probabilities, flags, perturbation sizes, dtypes and the Parquet round trip."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from advprior.analysis.outcomes import (
    DERIVED_COLUMNS,
    OUTCOME_COLUMNS,
    OUTCOME_DTYPES,
    STORED_COLUMNS,
    concat_outcomes,
    derive_outcomes,
    empty_outcomes,
    outcome_rows,
    read_outcomes,
    write_outcomes,
)


def _random_batch(n=16, c=7, seed=0, eps=4 / 255):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=gen)
    clean_logits = torch.randn(n, c, generator=gen) * 3
    adv_logits = clean_logits + torch.randn(n, c, generator=gen) * 3
    clean = torch.rand(n, 3, 5, 4, generator=gen)
    adv = (clean + eps * torch.randn(n, 3, 5, 4, generator=gen).sign()).clamp(0, 1)
    return labels, clean_logits, adv_logits, clean, adv


def test_columns_probabilities_and_flags():
    labels, cl, al, ci, ai = _random_batch()
    df = outcome_rows(torch.arange(100, 116), labels, cl, al, ci, ai, eps=4 / 255,
                      paths=[f"img{i}.JPEG" for i in range(16)])
    assert tuple(df.columns) == OUTCOME_COLUMNS
    assert df["index"].tolist() == list(range(100, 116))
    assert df["path"].iloc[3] == "img3.JPEG"
    assert np.allclose(df["eps_255"], 4.0)
    pc, pa = cl.double().softmax(1).numpy(), al.double().softmax(1).numpy()
    y = labels.numpy()
    order_c, order_a = np.argsort(-pc, 1), np.argsort(-pa, 1)
    np.testing.assert_array_equal(df["clean_top1"], order_c[:, 0])
    np.testing.assert_array_equal(df["clean_top2"], order_c[:, 1])
    np.testing.assert_array_equal(df["adv_top1"], order_a[:, 0])
    np.testing.assert_array_equal(df["adv_top2"], order_a[:, 1])
    rows = np.arange(16)
    np.testing.assert_allclose(df["clean_top1_prob"], pc[rows, order_c[:, 0]])
    np.testing.assert_allclose(df["adv_top2_prob"], pa[rows, order_a[:, 1]])
    np.testing.assert_allclose(df["clean_true_prob"], pc[rows, y])
    np.testing.assert_allclose(df["adv_true_prob"], pa[rows, y])
    np.testing.assert_allclose(df["adv_label_clean_prob"], pc[rows, order_a[:, 0]])
    np.testing.assert_array_equal(df["clean_true_in_top5"], (order_c[:, :5] == y[:, None]).any(1))
    np.testing.assert_array_equal(df["adv_label_in_clean_top5"], (order_c[:, :5] == order_a[:, :1]).any(1))
    np.testing.assert_array_equal(df["clean_correct"], order_c[:, 0] == y)
    np.testing.assert_array_equal(df["adv_correct"], order_a[:, 0] == y)
    np.testing.assert_array_equal(df["label_changed"], order_a[:, 0] != order_c[:, 0])


def test_high_confidence_requires_label_change():
    # row 0: changed, adv top-1 0.8 -> high; row 1: unchanged, adv top-1 0.95 -> not high;
    # row 2: changed, adv top-1 0.49 -> not high; row 3: changed at 0.51 -> high
    clean = torch.tensor([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.6, 0.4, 0.0]]).add(1e-9).log()
    adv = torch.tensor([[0.1, 0.8, 0.1], [0.95, 0.04, 0.01], [0.3, 0.49, 0.21], [0.3, 0.51, 0.19]]).log()
    df = outcome_rows([0, 1, 2, 3], [0, 0, 0, 0], clean, adv, None, None, eps=0.01)
    assert df["label_changed"].tolist() == [True, False, True, True]
    assert df["high_confidence"].tolist() == [True, False, False, True]
    df2 = outcome_rows([0, 1, 2, 3], [0, 0, 0, 0], clean, adv, None, None, eps=0.01, high_conf_threshold=0.9)
    assert not df2["high_confidence"].any()


def test_linf_l2_match_direct_computation():
    labels, cl, al, ci, ai = _random_batch(seed=3)
    df = outcome_rows(np.arange(16), labels, cl, al, ci, ai, eps=4 / 255)
    d = (ai.double() - ci.double()).numpy().reshape(16, -1)
    np.testing.assert_allclose(df["linf"], np.abs(d).max(1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(df["l2"], np.sqrt((d ** 2).sum(1)), rtol=1e-12)
    assert (df["linf"] <= 4 / 255 + 1e-6).all()
    nan_df = outcome_rows(np.arange(16), labels, cl, al, None, None, eps=4 / 255)
    assert nan_df["linf"].isna().all() and nan_df["l2"].isna().all()


def test_dtypes_are_explicit():
    labels, cl, al, ci, ai = _random_batch()
    df = outcome_rows(torch.arange(16), labels, cl, al, ci, ai, eps=0.0)
    for col in ("index", "label", "clean_top1", "adv_top2"):
        assert df[col].dtype == np.int64, col
    for col in ("eps", "clean_top1_prob", "linf", "l2", "adv_label_clean_prob"):
        assert df[col].dtype == np.float64, col
    for col in ("clean_correct", "label_changed", "high_confidence", "clean_true_in_top5"):
        assert df[col].dtype == bool, col
    assert isinstance(df["category"].dtype, pd.CategoricalDtype)
    assert (df["path"] == "").all()


def test_parquet_round_trip_keeps_values_and_dtypes(tmp_path):
    frames = []
    for k, eps in enumerate([0.0, 1 / 255, 4 / 255]):
        labels, cl, al, ci, ai = _random_batch(seed=k, eps=eps)
        frames.append(outcome_rows(torch.arange(16), labels, cl, al, ci, ai, eps=eps,
                                   paths=[f"p/{i}.png" for i in range(16)]))
    df = concat_outcomes(frames)
    assert len(df) == 48 and df.index.tolist() == list(range(48))
    path = write_outcomes(df, tmp_path / "sub" / "outcomes.parquet")
    assert path.exists() and not list(path.parent.glob(".*.tmp"))
    back = read_outcomes(path)
    pd.testing.assert_frame_equal(back, df)
    assert dict(back.dtypes) == dict(df.dtypes)
    assert list(back["category"].cat.categories) == list(OUTCOME_DTYPES["category"].categories)


def test_read_outcomes_names_missing_columns(tmp_path):
    labels, cl, al, ci, ai = _random_batch()
    df = outcome_rows(torch.arange(16), labels, cl, al, ci, ai, eps=0.01)
    p = tmp_path / "bad.parquet"
    df.drop(columns=["l2", "label_changed", "category"]).to_parquet(p)
    # the derived columns (category, high_confidence) may be absent: they are recomputed at summary time
    with pytest.raises(ValueError, match=r"missing outcome columns \['l2', 'label_changed'\]"):
        read_outcomes(p)


def test_concat_empty_and_extra_columns():
    e = concat_outcomes([])
    assert tuple(e.columns) == OUTCOME_COLUMNS and len(e) == 0
    assert dict(e.dtypes) == dict(empty_outcomes().dtypes)
    labels, cl, al, ci, ai = _random_batch()
    df = outcome_rows(torch.arange(16), labels, cl, al, ci, ai, eps=0.01).assign(model="vgg19")
    out = concat_outcomes([df, df])
    assert out.columns[-1] == "model" and len(out) == 32


def test_invalid_arguments():
    labels, cl, al, ci, ai = _random_batch()
    with pytest.raises(ValueError, match="eps"):
        outcome_rows(torch.arange(16), labels, cl, al, ci, ai, eps=4.0)
    with pytest.raises(ValueError, match="adv_logits"):
        outcome_rows(torch.arange(16), labels, cl, al[:, :3], ci, ai, eps=0.01)
    with pytest.raises(ValueError, match="labels"):
        outcome_rows(torch.arange(16), labels + 100, cl, al, ci, ai, eps=0.01)
    with pytest.raises(ValueError, match="paths"):
        outcome_rows(torch.arange(16), labels, cl, al, ci, ai, eps=0.01, paths=["a"])


def test_derived_columns_recomputed_from_the_stored_ones_equal_a_direct_computation(tmp_path):
    """The store keeps the table without high_confidence/category; derive_outcomes with any settings gives
    exactly what outcome_rows computes with those settings."""
    labels, cl, al, ci, ai = _random_batch(n=64, c=7, seed=3)
    close = torch.rand(7, 7, generator=torch.Generator().manual_seed(1)) > 0.6
    stored = write_outcomes(outcome_rows(torch.arange(64), labels, cl, al, ci, ai, eps=0.01), tmp_path / "s.parquet",
                            derived=False)
    back = read_outcomes(stored)
    assert tuple(back.columns) == STORED_COLUMNS and not set(DERIVED_COLUMNS) & set(back.columns)
    for thr, refocus, cm in ((0.5, 0.05, None), (0.3, 0.2, close), (0.9, 0.0, close)):
        direct = outcome_rows(torch.arange(64), labels, cl, al, ci, ai, eps=0.01, high_conf_threshold=thr,
                              close=cm, refocus_min_prob=refocus)
        pd.testing.assert_frame_equal(derive_outcomes(back, thr, cm, refocus), direct)
    with pytest.raises(ValueError, match="high_conf_threshold"):
        derive_outcomes(back, 1.5)
