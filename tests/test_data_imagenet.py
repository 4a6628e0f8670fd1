"""ImageNet data module, robust image dataset and class hierarchy, on a generated tiny ImageNet tree."""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch

from advprior.data.hierarchy import VIRTUAL_ROOT, ClassHierarchy
from advprior.data.imagefiles import BadImageError, ImageFileDataset, SkipNoneCollate, make_loader
from advprior.data.imagenet import ImageNetDataModule, eval_transform

try:
    from imagenet_fixture import find_bad_worker, make_fake_imagenet, red_value, truncated_jpeg_bytes, write_jpeg
except ImportError:  # tests/ imported as a package
    from tests.imagenet_fixture import find_bad_worker, make_fake_imagenet, red_value, truncated_jpeg_bytes, write_jpeg

RED_TOL = 0.06


def _dm(root, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_workers", 0)
    return ImageNetDataModule(root, **kw)


def _all(loader):
    xs, ys, idx = [], [], []
    for x, y, i in loader:
        xs.append(x)
        ys.append(y)
        idx.append(i)
    return torch.cat(xs), torch.cat(ys), torch.cat(idx)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return make_fake_imagenet(tmp_path_factory.mktemp("imagenet"), num_classes=5, per_class_train=6, num_val=12)


@pytest.fixture(scope="module")
def fake_flat(tmp_path_factory):
    return make_fake_imagenet(tmp_path_factory.mktemp("imagenet_flat"), num_classes=5, per_class_train=2,
                              num_val=12, flat_val=True)


# ---------------------------------------------------------------------------------------- hierarchy
#          r
#        /   \
#       a     b
#      / \     \
#     x   y     c
#              / \
#             z   w        classes (sorted wnids): w=0, x=1, y=2, z=3
HAND = {"r": None, "a": "r", "b": "r", "x": "a", "y": "a", "c": "b", "z": "c", "w": "c"}


def test_hierarchy_hand_built_tree():
    h = ClassHierarchy.from_parents(HAND, names={"x": "ex"})
    assert h.num_classes == 4 and h.wnids == ["w", "x", "y", "z"]
    assert h.names == ["w", "ex", "y", "z"]
    assert h.ancestors("z") == ["r", "b", "c", "z"] and h.ancestors(3) == ["r", "b", "c", "z"]
    assert h.ancestors(1, include_self=False) == ["r", "a"]
    assert [h.depth(c) for c in range(4)] == [3, 2, 2, 3]
    assert h.depth("r") == 0 and h.depth("c") == 2
    assert h.lca(1, 2) == "a" and h.lca_depth(1, 2) == 1
    assert h.lca("x", "z") == "r" and h.lca_depth(1, 3) == 0
    assert h.lca(0, 3) == "c" and h.lca(1, 1) == "x"
    expected = {(1, 2): 2, (1, 3): 5, (0, 3): 2, (2, 0): 5, (1, 1): 0}
    for (a, b), d in expected.items():
        assert h.distance(a, b) == d and h.distance(b, a) == d
    assert h.distance("x", "c") == 4  # nodes, not only classes
    with pytest.raises(ValueError, match="cls"):
        h.depth(4)


def test_distance_matrix_matches_pairwise_distance():
    h = ClassHierarchy.from_parents(HAND)
    D = h.distance_matrix()
    assert D.shape == (4, 4) and D.dtype == torch.int64
    assert torch.equal(D, D.T) and torch.all(D.diagonal() == 0)
    assert D.tolist() == [[h.distance(a, b) for b in range(4)] for a in range(4)]
    close = h.close_matrix(2)
    assert close.dtype == torch.bool and torch.equal(close, D <= 2)
    assert close.tolist() == [[True, False, False, True], [False, True, True, False],
                              [False, True, True, False], [True, False, False, True]]
    with pytest.raises(ValueError, match="max_distance"):
        h.close_matrix(-1)


def test_distance_matrix_large_random_tree():
    rng = np.random.default_rng(0)
    parents = {"n0": None}
    for i in range(1, 1900):  # random recursive tree: leaves at mixed depths
        parents[f"n{i}"] = f"n{int(rng.integers(0, i))}"
    h = ClassHierarchy.from_parents(parents)
    D = h.distance_matrix()
    C = h.num_classes
    assert C > 500 and torch.equal(D, D.T) and torch.all(D.diagonal() == 0)
    for a, b in rng.integers(0, C, (300, 2)):
        assert D[a, b].item() == h.distance(int(a), int(b))


def test_hierarchy_virtual_root_and_cycle():
    h = ClassHierarchy.from_parents({"p": None, "q": None, "x": "p", "y": "q"})
    assert h.lca(0, 1) == VIRTUAL_ROOT and h.distance(0, 1) == 4 and h.depth("x") == 2
    with pytest.raises(ValueError, match="cycle"):
        ClassHierarchy.from_parents({"r": None, "a": "b", "b": "a", "x": "r"})


def test_hierarchy_from_meta_mat(fake):
    h = ClassHierarchy.from_meta_mat(fake.meta_mat)
    assert h.num_classes == 5 and h.wnids == fake.wnids == sorted(fake.wnids)
    assert h.names == ["class0", "class1", "class2", "class3", "class4"]
    # the devkit ID order is the reverse of the class (sorted-wnid) order
    assert [h.ilsvrc2012_ids[w] for w in h.wnids] == [5, 4, 3, 2, 1]
    R, A, B, B1 = (fake.internal[k] for k in ("R", "A", "B", "B1"))
    assert h.ancestors(3) == [R, B, B1, fake.wnids[3]]
    assert h.ancestors(4) == [R, A, fake.wnids[4]]  # first parent A kept, second parent B1 ignored
    assert [h.depth(c) for c in range(5)] == [2, 2, 2, 3, 2]
    assert h.lca(0, 2) == A and h.lca(1, 3) == B and h.lca(0, 1) == R
    assert [h.distance(0, c) for c in range(5)] == [0, 4, 2, 5, 2]
    assert h.distance(1, 3) == 3 and h.lca_depth(1, 3) == 1


def test_meta_mat_missing():
    with pytest.raises(FileNotFoundError, match="meta.mat"):
        ClassHierarchy.from_meta_mat("/nonexistent/data/meta.mat")


# ---------------------------------------------------------------------------------------- image files
@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    good = []
    for k in range(5):
        p = tmp_path / f"img{k}.jpg"
        write_jpeg(p, k, rng)
        good.append(str(p))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(truncated_jpeg_bytes(rng))
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image" * 10)
    return good, str(truncated), str(garbage)


def test_image_files_skip_at_preflight(files, caplog):
    good, truncated, garbage = files
    samples = [(good[0], 0), (truncated, 9), (good[1], 1), (garbage, 9), (good[2], 2)]
    with caplog.at_level(logging.WARNING):
        ds = ImageFileDataset(samples, eval_transform(), check="decode")
    assert len(ds) == 3 and ds.paths == good[:3] and ds.targets == [0, 1, 2]
    assert ds.bad_files == [truncated, garbage]
    assert truncated in caplog.text and garbage in caplog.text and "2 of 5" in caplog.text
    caplog.clear()
    loader = make_loader(ds, batch_size=2)
    with caplog.at_level(logging.WARNING):
        x, y, idx = _all(loader)
    assert idx.tolist() == [0, 1, 2] and y.tolist() == [0, 1, 2]
    assert "2 undecodable image file(s) skipped in total" in caplog.text  # end-of-pass summary
    for k in range(3):
        assert abs(x[k, 0].mean().item() - red_value(k)) < RED_TOL


def test_image_files_error_mode_names_path(files):
    good, truncated, _ = files
    with pytest.raises(BadImageError, match="truncated.jpg") as e:
        ImageFileDataset([(good[0], 0), (truncated, 1)], on_bad_image="error")
    assert "data.on_bad_image=skip" in str(e.value)
    ds = ImageFileDataset([(good[0], 0), (truncated, 1)], eval_transform(), on_bad_image="error", check="header")
    with pytest.raises(BadImageError, match="truncated.jpg"):
        _all(make_loader(ds, batch_size=2))
    with pytest.raises(ValueError, match="on_bad_image"):
        ImageFileDataset([], on_bad_image="ignore")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_image_files_lazy_skip(files, caplog, num_workers):
    """check="header" misses truncation: the file is dropped from its batch and still reported."""
    good, truncated, garbage = files
    samples = [(good[0], 0), (truncated, 9), (good[1], 1), (garbage, 9), (good[2], 2)]
    ds = ImageFileDataset(samples, eval_transform(), check="header")
    assert len(ds) == 4 and ds.bad_files == [garbage]  # verify() catches garbage only
    with caplog.at_level(logging.WARNING):
        x, y, idx = _all(make_loader(ds, batch_size=2, num_workers=num_workers))
    assert y.tolist() == [0, 1, 2] and idx.tolist() == [0, 2, 3] and x.shape == (3, 3, 224, 224)
    assert ds.bad_files == [garbage, truncated]  # seen from the main process, also with workers
    assert "2 undecodable image file(s) skipped in total" in caplog.text


def test_skip_none_collate_empty_batch():
    x, y, i = SkipNoneCollate((3, 8, 8))([None, None])
    assert x.shape == (0, 3, 8, 8) and y.shape == (0,) and i.shape == (0,) and y.dtype == torch.long


@pytest.mark.ddp
def test_find_bad_sharded_over_ranks_agrees(files, tmp_path):
    good, truncated, garbage = files
    paths = [good[0], truncated, good[1], good[2], garbage, good[3]]
    out = str(tmp_path / "bad")
    # the worker lives in the light fixture module: children then skip importing Lightning
    torch.multiprocessing.spawn(find_bad_worker, args=(2, str(tmp_path / "init"), paths, out), nprocs=2)
    results = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    # rank 0 checked positions 0, 2, 4 and rank 1 checked 1, 3, 5; both end with the union
    assert results[0] == results[1] and sorted(results[0]) == [1, 4]


# ---------------------------------------------------------------------------------------- data module
@pytest.mark.parametrize("layout", ["folders", "flat"])
def test_val_labels_in_both_layouts(layout, fake, fake_flat, caplog):
    info = fake if layout == "folders" else fake_flat
    dm = _dm(info.root)
    with caplog.at_level(logging.WARNING):
        dm.setup("validate")
    ds = dm.eval_dataset()
    # file-name order, corrupt val image 3 skipped; labels from the ground truth through meta.mat
    expected = [(str(p), y) for p, y in zip(info.val_files, info.val_labels) if p != info.corrupt]
    assert ds.samples == expected
    assert ds.samples[0] == (str(info.val_files[0]), 4)  # ILSVRC2012_ID 1 = sorted class 4
    # image 2 has ID 2 -> class 3; image 5 ID 5 -> class 0; image 6 ID 1 -> class 4 (image 3 is skipped)
    assert [ds.samples[j][1] for j in (1, 3, 4)] == [3, 0, 4]
    x, y, idx = _all(dm.val_dataloader())
    assert x.shape == (11, 3, 224, 224) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert idx.tolist() == list(range(11)) and y.tolist() == [s[1] for s in expected]
    red = x[:, 0].mean(dim=(1, 2))
    assert torch.allclose(red, torch.tensor([red_value(int(c)) for c in y]), atol=RED_TOL)
    assert str(info.corrupt) in caplog.text and ds.bad_files == [str(info.corrupt)]


def test_properties(fake):
    dm = _dm(fake.root)
    assert dm.num_classes == 5 and dm.wnids == fake.wnids and dm.class_names == fake.names
    assert dm.input_shape == (3, 224, 224)
    assert dm.hierarchy.distance(0, 3) == 5


def test_val_subset_first_n_in_file_name_order(fake):
    dm = _dm(fake.root, val_subset=5)
    dm.setup("test")
    # first 5 files by name; the corrupt third is dropped, not replaced
    assert dm.eval_dataset().paths == [str(p) for p in fake.val_files[:5] if p != fake.corrupt]
    dm2 = _dm(fake.root, val_subset=5)
    _, _, _ = _all(dm2.test_dataloader())
    assert dm2.eval_dataset().samples == dm.eval_dataset().samples
    with pytest.raises(ValueError, match="val_subset"):
        _dm(fake.root, val_subset=0)
    alias = _dm(fake.root, eval_subset=5, eval_batch_size=3)  # DigitsDataModule's names
    assert alias.eval_dataset().samples == dm.eval_dataset().samples
    assert [len(b[1]) for b in alias.val_dataloader()] == [3, 1]
    with pytest.raises(ValueError, match="eval_subset"):
        _dm(fake.root, eval_subset=5, val_subset=6)


def test_support_set_deterministic_per_seed(fake):
    def support(seed, selection="random"):
        dm = _dm(fake.root, support_per_class=2, seed=seed, support_selection=selection)
        x, y, _ = _all(dm.support_dataloader())
        red = x[:, 0].mean(dim=(1, 2))
        assert torch.allclose(red, torch.tensor([red_value(int(c)) for c in y]), atol=RED_TOL)
        return dm.support_dataset().samples

    s0 = support(0)
    assert [y for _, y in s0] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert all(p.startswith(str(fake.root / "train" / fake.wnids[y])) for p, y in s0)
    assert support(0) == s0 and support(1) != s0
    first = support(0, "first")
    assert [p for p, _ in first] == [str(p) for w in fake.wnids for p in fake.train_files[w][:2]]


def test_support_replaces_undecodable_train_image(tmp_path, caplog):
    info = make_fake_imagenet(tmp_path, num_classes=3, per_class_train=4, num_val=3, corrupt_one=False)
    bad = info.train_files[info.wnids[1]][0]
    bad.write_bytes(b"garbage")
    dm = _dm(info.root, support_per_class=2, support_selection="first")
    with caplog.at_level(logging.WARNING):
        dm.setup("validate")
    paths = dm.support_dataset().paths
    assert [y for y in dm.support_dataset().targets] == [0, 0, 1, 1, 2, 2]
    assert str(bad) not in paths and str(info.train_files[info.wnids[1]][2]) in paths
    assert dm.support_dataset().bad_files == [str(bad)] and str(bad) in caplog.text


def test_missing_train_folder_error(tmp_path):
    info = make_fake_imagenet(tmp_path, num_classes=2, per_class_train=1, num_val=2, corrupt_one=False)
    shutil.rmtree(info.root / "train")
    dm = _dm(info.root, support_per_class=1)
    dm.setup("validate")  # evaluation alone does not need train/
    with pytest.raises(FileNotFoundError, match=str(info.root / "train")):
        dm.support_dataloader()
    with pytest.raises(FileNotFoundError, match="train"):
        dm.setup("fit")


def test_missing_devkit_and_ground_truth_errors(tmp_path):
    info = make_fake_imagenet(tmp_path / "in", num_classes=3, per_class_train=1, num_val=3, flat_val=True,
                              corrupt_one=False)
    moved = shutil.move(str(info.devkit), str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_devkit_t12/data/meta.mat") as e:
        _dm(info.root).setup("validate")
    assert str(info.root) in str(e.value) and "data.devkit" in str(e.value)
    dm = _dm(info.root, devkit=moved)  # the devkit given as a separate path
    dm.setup("validate")
    assert dm.eval_dataset().targets == info.val_labels
    os.remove(os.path.join(moved, "data", "ILSVRC2012_validation_ground_truth.txt"))
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_validation_ground_truth.txt"):
        _dm(info.root, devkit=moved).setup("validate")
    with pytest.raises(FileNotFoundError, match="Validation folder not found"):
        _dm(tmp_path / "nothing", devkit=moved).setup("validate")


def test_val_dir_override_and_folder_ground_truth_mismatch(tmp_path):
    info = make_fake_imagenet(tmp_path / "a", num_classes=3, per_class_train=1, num_val=6, corrupt_one=False)
    flat = make_fake_imagenet(tmp_path / "b", num_classes=3, per_class_train=1, num_val=6, flat_val=True,
                              corrupt_one=False)
    dm = _dm(info.root, val_dir=flat.root / "val")
    dm.setup("validate")
    assert dm.eval_dataset().paths == [str(p) for p in flat.val_files]
    # a val image filed under the wrong class folder contradicts the devkit ground truth
    p = info.val_files[0]
    shutil.move(str(p), str(info.root / "val" / info.wnids[0] / p.name))
    with pytest.raises(ValueError, match=p.name):
        _dm(info.root).setup("validate")


def test_error_mode_names_corrupt_file(fake):
    with pytest.raises(BadImageError, match=fake.corrupt.name) as e:
        _dm(fake.root, on_bad_image="error").setup("validate")
    assert str(fake.corrupt) in str(e.value) and "data.on_bad_image=skip" in str(e.value)


def test_train_loader_seeded_shuffle(fake):
    def order(seed):
        dm = _dm(fake.root, seed=seed, batch_size=8)
        dm.setup("fit")
        return _all(dm.train_dataloader())[2].tolist()

    o = order(0)
    assert sorted(o) == list(range(30)) and o == order(0) and o != order(1) and o != sorted(o)


def test_lightning_validate_sees_every_image_once(fake, caplog):
    import pytorch_lightning as pl

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.seen = []

        def validation_step(self, batch, batch_idx):
            x, y, i = batch
            self.seen += i.tolist()

    probe = Probe()
    dm = _dm(fake.root)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    with caplog.at_level(logging.WARNING):
        trainer.validate(probe, datamodule=dm)
    assert sorted(probe.seen) == list(range(11))
    assert "1 undecodable image file(s) skipped in total" in caplog.text
