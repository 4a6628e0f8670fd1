"""Categories: hand-built logits where each category occurs exactly as defined; similarity matrices."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from advprior.analysis.categories import CATEGORIES, categorize, categorize_frame
from advprior.analysis.outcomes import outcome_rows
from advprior.analysis.similarity import hierarchy_close, weight_similarity_close

C = 6
# close[true, adv]: classes 0 and 1 are "close" (e.g. two dog breeds)
CLOSE = torch.zeros(C, C, dtype=torch.bool)
CLOSE[0, 1] = CLOSE[1, 0] = True

# (label, clean probs, adv probs, expected category)
CASES = [
    # correct -> unrelated class 3, which was last in the clean ranking (not in clean top-5)
    (0, [0.70, 0.10, 0.10, 0.01, 0.05, 0.04], [0.10, 0.05, 0.05, 0.60, 0.10, 0.10], "true"),
    # correct -> class 2, already in clean top-5 with clean prob 0.30 >= 0.05
    (0, [0.60, 0.05, 0.30, 0.01, 0.02, 0.02], [0.20, 0.05, 0.70, 0.01, 0.02, 0.02], "refocused"),
    # correct -> close class 1 (also refocus-eligible: conatural takes precedence)
    (0, [0.60, 0.30, 0.05, 0.01, 0.02, 0.02], [0.30, 0.60, 0.05, 0.01, 0.02, 0.02], "conatural"),
    # wrong (4) -> correct (2)
    (2, [0.10, 0.05, 0.30, 0.01, 0.50, 0.04], [0.05, 0.05, 0.80, 0.01, 0.05, 0.04], "benign"),
    # wrong (4) -> still wrong (5)
    (2, [0.10, 0.05, 0.30, 0.01, 0.50, 0.04], [0.05, 0.05, 0.20, 0.01, 0.09, 0.60], "wrong_to_wrong"),
    # correct, unchanged, very confident adversarial top-1: not high confidence (no label change)
    (0, [0.70, 0.10, 0.10, 0.01, 0.05, 0.04], [0.90, 0.02, 0.02, 0.02, 0.02, 0.02], "unchanged"),
    # wrong, unchanged
    (2, [0.10, 0.05, 0.30, 0.01, 0.50, 0.04], [0.10, 0.05, 0.20, 0.01, 0.60, 0.04], "unchanged"),
    # correct -> class 2 in clean top-5 but with clean prob 0.04 < 0.05: true, not refocused
    (0, [0.80, 0.05, 0.04, 0.03, 0.05, 0.03], [0.30, 0.05, 0.45, 0.10, 0.05, 0.05], "true"),
]


def _batch():
    labels = torch.tensor([c[0] for c in CASES])
    clean = torch.tensor([c[1] for c in CASES], dtype=torch.float64).log()
    adv = torch.tensor([c[2] for c in CASES], dtype=torch.float64).log()
    expected = [c[3] for c in CASES]
    return labels, clean, adv, expected


def test_every_row_gets_its_defined_category():
    labels, clean, adv, expected = _batch()
    df = outcome_rows(torch.arange(len(CASES)), labels, clean, adv, None, None, eps=4 / 255, close=CLOSE)
    assert df["category"].astype(str).tolist() == expected
    # every adversarial category and both non-adversarial ones occur
    assert set(expected) == set(CATEGORIES)


def test_categories_partition_and_definitions_hold_on_random_rows():
    gen = torch.Generator().manual_seed(0)
    n, c = 4000, 10
    labels = torch.randint(0, c, (n,), generator=gen)
    clean = torch.randn(n, c, generator=gen) * 2
    adv = clean + torch.randn(n, c, generator=gen) * 1.5
    close = weight_similarity_close(torch.randn(c, 5, generator=gen), k=2)
    df = outcome_rows(torch.arange(n), labels, clean, adv, None, None, eps=0.01, close=close)
    cat = df["category"].astype(str).to_numpy()
    y, a, cl = df["label"].to_numpy(), df["adv_top1"].to_numpy(), df["clean_top1"].to_numpy()
    cc, ch = cl == y, a != cl
    is_close = close.numpy()[y, a]
    np.testing.assert_array_equal(cat == "benign", ~cc & (a == y))
    np.testing.assert_array_equal(cat == "conatural", cc & ch & is_close)
    refoc = cc & ch & ~is_close & df["adv_label_in_clean_top5"].to_numpy() & (df["adv_label_clean_prob"].to_numpy() >= 0.05)
    np.testing.assert_array_equal(cat == "refocused", refoc)
    np.testing.assert_array_equal(cat == "true", cc & ch & ~is_close & ~refoc)
    np.testing.assert_array_equal(cat == "wrong_to_wrong", ~cc & ch & (a != y))
    np.testing.assert_array_equal(cat == "unchanged", ~ch)
    assert all(k in CATEGORIES for k in set(cat))


def test_refocus_threshold_is_configurable_and_close_none_means_no_conatural():
    labels, clean, adv, expected = _batch()
    df = outcome_rows(torch.arange(len(CASES)), labels, clean, adv, None, None, eps=0.0,
                      close=None, refocus_min_prob=0.03)
    got = df["category"].astype(str).tolist()
    assert got[7] == "refocused"  # clean prob 0.04 >= 0.03
    assert got[2] == "refocused"  # no close matrix: the close class falls back to refocused
    assert "conatural" not in got
    # recomputing from the frame with the close matrix gives the original categories
    assert categorize_frame(df, close=CLOSE).tolist() == expected


def test_categorize_validates_arguments():
    with pytest.raises(ValueError, match="refocus_min_prob"):
        categorize([0], [0], [1], [True], [0.5], refocus_min_prob=2.0)
    with pytest.raises(ValueError, match="close"):
        categorize([0], [0], [1], [True], [0.5], close=np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match="adv_top1"):
        categorize([0, 1], [0, 1], [1], [True, True], [0.5, 0.5])


def test_weight_similarity_close_constructed_weights():
    # rows: e1, e1 + 0.1 e2, e2, -e2 (cosines: s01=.995, s12=.0995, s02=0, s03=0, s13=-.0995, s23=-1)
    w = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.0, -1.0]])
    close = weight_similarity_close(w, k=1)
    # nearest: 0->1, 1->0, 2->1, 3->0 (cos 0 beats -0.0995 and -1); symmetrized
    expected = torch.zeros(4, 4, dtype=torch.bool)
    for i, j in [(0, 1), (2, 1), (3, 0)]:
        expected[i, j] = expected[j, i] = True
    assert torch.equal(close, expected)
    assert not close.diagonal().any()
    close2 = weight_similarity_close(w, k=2)
    # 2 nearest: 1->{0,2}, 2->{1,0}, 3->{0,1} (s31=-.0995 beats s32=-1); 0's second is a tie (s02=s03=0)
    assert close2[1, 2] and close2[3, 1] and close2[2, 0]
    assert torch.equal(close2, close2.T)
    assert (close2.sum(1) >= 2).all()


def test_weight_similarity_close_validates_k():
    with pytest.raises(ValueError, match="k must"):
        weight_similarity_close(torch.eye(3), k=3)
    with pytest.raises(ValueError, match="weight"):
        weight_similarity_close(torch.ones(3))


def test_hierarchy_close():
    d = torch.tensor([[0, 2, 5], [2, 0, 3], [5, 3, 0]])
    close = hierarchy_close(d, max_distance=3)
    assert close.tolist() == [[False, True, False], [True, False, True], [False, True, False]]
    with pytest.raises(ValueError, match="distance_matrix"):
        hierarchy_close(torch.zeros(2, 3), 1)
