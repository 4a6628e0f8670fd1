"""FolderDataModule: layouts, deterministic stratified split, image size/channels, bad files."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from advprior.data.folder import FolderDataModule, split_counts
from advprior.data.imagefiles import BadImageError

try:
    from imagenet_fixture import red_value, truncated_jpeg_bytes, write_jpeg
except ImportError:  # tests/ imported as a package
    from tests.imagenet_fixture import red_value, truncated_jpeg_bytes, write_jpeg

COUNTS = {"cat": 10, "dog": 7, "emu": 4}  # class index: cat 0, dog 1, emu 2
SPLIT = (0.6, 0.2, 0.2)
FRACTIONS = {"val_fraction": 0.2, "test_fraction": 0.2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for label, (name, n) in enumerate(COUNTS.items()):
        for j in range(n):
            write_jpeg(root / name / f"{name}_{j:02d}.jpg", label, rng, size=(24, 20))
    return root


def _dm(root, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_workers", 0)
    kw.setdefault("image_size", 16)
    return FolderDataModule(root, **kw)


def _all(loader):
    batches = list(loader)
    return tuple(torch.cat([b[k] for b in batches]) for k in range(3))


def test_split_counts():
    assert split_counts(10, SPLIT) == (6, 2, 2)
    assert split_counts(7, SPLIT) == (5, 1, 1)  # 1.4 -> 1
    assert split_counts(4, SPLIT) == (2, 1, 1)  # 0.8 -> 1
    assert split_counts(5, (0.0, 0.5, 0.5)) == (0, 3, 2)  # 2.5 -> 3, test gets the rest


def test_single_tree_split_is_stratified_and_deterministic(tree):
    dm = _dm(tree, **FRACTIONS, seed=0)
    s = dm.samples()
    assert dm.class_names == ["cat", "dog", "emu"] and dm.num_classes == 3 and dm.hierarchy is None
    for label, (name, n) in enumerate(COUNTS.items()):
        per = {k: [p for p, y in s[k] if y == label] for k in ("train", "val", "test")}
        assert tuple(len(per[k]) for k in ("train", "val", "test")) == split_counts(n, SPLIT)
        every = per["train"] + per["val"] + per["test"]
        assert sorted(every) == sorted(str(p) for p in (tree / name).iterdir())  # disjoint, complete
        assert all(f"/{name}/" in p for p in every)
    assert _dm(tree, **FRACTIONS, seed=0).samples() == s
    assert _dm(tree, **FRACTIONS, seed=1).samples() != s


def test_loaders_shapes_labels_and_channels(tree):
    dm = _dm(tree, **FRACTIONS, image_size=16)
    x, y, idx = _all(dm.val_dataloader())
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert idx.tolist() == [0, 1, 2, 3] and y.tolist() == [0, 0, 1, 2]
    red = x[:, 0].mean(dim=(1, 2))
    assert torch.allclose(red, torch.tensor([red_value(int(c)) for c in y]), atol=0.06)
    gray = _dm(tree, **FRACTIONS, image_size=8, resize_size=10, channels=1)
    assert gray.input_shape == (1, 8, 8)
    xg, _, _ = _all(gray.test_dataloader())
    assert xg.shape == (4, 1, 8, 8)
    sub = _dm(tree, **FRACTIONS, eval_subset=3, eval_batch_size=2)
    assert sub.eval_dataset().samples == sub.samples()["test"][:3]
    assert [len(b[1]) for b in sub.predict_dataloader()] == [2, 1]
    _, _, it = _all(dm.train_dataloader())
    assert sorted(it.tolist()) == list(range(13)) and it.tolist() != list(range(13))


def test_support_set(tree):
    s0 = _dm(tree, support_per_class=2, seed=0)
    _, y, _ = _all(s0.support_dataloader())
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    train = set(s0.samples()["train"])
    assert set(s0.support_dataset().samples) <= train
    again = _dm(tree, support_per_class=2, seed=0)
    again.setup("fit")
    assert again.support_dataset().samples == s0.support_dataset().samples
    assert again.support_dataset(1).targets == [0, 1, 2]
    assert _dm(tree, support_per_class=2, seed=5).support_dataset().samples != s0.support_dataset().samples


def test_presplit_layout_and_corrupt_file(tmp_path, caplog):
    rng = np.random.default_rng(1)
    for split, n in (("train", 3), ("val", 2)):
        for label, name in enumerate(["b", "a"][::-1]):  # classes a=0, b=1
            for j in range(n):
                write_jpeg(tmp_path / split / name / f"{j}.png", label, rng, size=(20, 20))
    bad = tmp_path / "val" / "b" / "broken.jpg"
    bad.write_bytes(truncated_jpeg_bytes(rng))
    dm = _dm(tmp_path)
    with caplog.at_level(logging.WARNING):
        dm.setup("validate")
    assert dm.class_names == ["a", "b"]
    ds = dm.split("val")
    assert ds.targets == [0, 0, 1, 1] and str(bad) not in ds.paths and ds.bad_files == [str(bad)]
    assert str(bad) in caplog.text
    assert _dm(tmp_path).samples()["test"] == dm.samples()["val"]  # no test/: test uses val
    with pytest.raises(BadImageError, match="broken.jpg"):
        _dm(tmp_path, on_bad_image="error").setup("validate")
    (tmp_path / "val" / "zebra").mkdir()
    with pytest.raises(ValueError, match="zebra"):
        _dm(tmp_path).samples()


def test_invalid_arguments(tree, tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        _dm(tree, val_fraction=-0.1)
    with pytest.raises(ValueError, match="test_fraction"):
        _dm(tree, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="channels"):
        _dm(tree, channels=2)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        _ = _dm(tmp_path / "missing").num_classes
