"""The embedded default's data: shapes, range, deterministic stratified splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from advprior.data.digits import DigitsDataModule


def test_shapes_range_and_sizes():
    dm = DigitsDataModule(image_size=32, channels=1, seed=0)
    dm.setup()
    sizes = {s: len(dm.split(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    x, y, i = dm.split("train")[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    imgs = dm.split("train").images
    assert imgs.min() >= 0 and imgs.max() <= 1 and imgs.max() > 0.99
    assert isinstance(y, int) and i == 0
    xb, yb, ib = next(iter(dm.train_dataloader()))
    assert xb.shape == (64, 1, 32, 32) and yb.dtype == torch.int64


def test_three_channels_replicate():
    dm = DigitsDataModule(channels=3, image_size=16)
    x = dm.split("test").images
    assert x.shape[1:] == (3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 2])


def test_split_is_deterministic_and_seed_dependent():
    a, b, c = (DigitsDataModule(seed=s) for s in (0, 0, 1))
    for s in ("train", "val", "test"):
        assert torch.equal(a.split(s).images, b.split(s).images)
    assert not torch.equal(a.split("test").images, c.split("test").images)


def test_split_is_stratified():
    from sklearn.datasets import load_digits
    overall = np.bincount(load_digits().target, minlength=10) / 1797
    dm = DigitsDataModule(seed=3)
    for s in ("train", "val", "test"):
        counts = np.bincount(dm.split(s).labels.numpy(), minlength=10)
        # stratified: each class's count is its overall share of the split, up to rounding
        assert np.abs(counts - overall * counts.sum()).max() <= 1.5, (s, counts)


def test_splits_are_disjoint():
    dm = DigitsDataModule(seed=0)
    flat = {s: {tuple(v.flatten()[::7].tolist()) for v in dm.split(s).images} for s in ("train", "test")}
    # digits has a few exact duplicate images; the overlap must be at most those
    assert len(flat["train"] & flat["test"]) <= 5


def test_shuffled_loader_repeats_for_a_seed():
    l1 = [b[2] for b in DigitsDataModule(seed=0).train_dataloader()]
    l2 = [b[2] for b in DigitsDataModule(seed=0).train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(l1, l2))


def test_support_and_eval_subsets():
    dm = DigitsDataModule(seed=0, eval_subset=20, support_per_class=5)
    assert len(dm.eval_dataset()) == 20
    sup = dm.support_dataset()
    assert np.bincount(sup.labels.numpy()).tolist() == [5] * 10


def test_invalid_arguments():
    with pytest.raises(ValueError, match="channels"):
        DigitsDataModule(channels=2)
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataModule(val_fraction=0.6, test_fraction=0.5)
