"""Bad JPEGs in every loader (training, attack, features, defense) are skipped and counted in metrics.json;
the decode check is cached and never runs when no stage needs images; missing weights are reported before
any image is read."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from advprior.cli import run_task
from advprior.data import imagefiles
from advprior.data.imagefiles import ImageFileDataset, find_bad
from advprior.data.imagenet import ImageNetDataModule
from advprior.models.checkpoint import CheckpointError

try:
    from imagenet_fixture import make_fake_imagenet, truncated_jpeg_bytes
except ImportError:  # tests/ imported as a package
    from tests.imagenet_fixture import make_fake_imagenet, truncated_jpeg_bytes

SMALL = ["data.image_size=32", "data.resize_size=36", "data.num_workers=0", "data.batch_size=4"]


def _corrupt(path: Path) -> None:
    path.write_bytes(truncated_jpeg_bytes(np.random.default_rng(1)))


def test_bad_jpegs_in_every_loader_are_skipped_and_counted(make_cfg, tmp_path, monkeypatch, one_torch_thread):
    fake = make_fake_imagenet(tmp_path / "imagenet", num_classes=4, per_class_train=5, num_val=8)
    bad_train = fake.train_files[fake.wnids[1]][2]
    _corrupt(bad_train)  # never preflighted in training: dropped by the training loader's collate
    corrupted: dict[str, str] = {}
    real_eval, real_support = ImageNetDataModule.eval_dataset, ImageNetDataModule.support_dataset

    def eval_then_corrupt(self):  # passes the preflight, then breaks: only the loops can find it
        ds = real_eval(self)
        if "eval" not in corrupted:
            corrupted["eval"] = ds.samples[4][0]
            _corrupt(Path(corrupted["eval"]))
        return ds

    def support_then_corrupt(self, per_class=None):
        ds = real_support(self, per_class)
        if "support" not in corrupted:
            corrupted["support"] = ds.samples[0][0]
            _corrupt(Path(corrupted["support"]))
        return ds

    monkeypatch.setattr(ImageNetDataModule, "eval_dataset", eval_then_corrupt)
    monkeypatch.setattr(ImageNetDataModule, "support_dataset", support_then_corrupt)
    cfg = make_cfg(["experiment=paper_imagenet", "stages=[attack,prior,defense]", "target_model=null",
                    f"data.root={fake.root}", *SMALL, "data.support_per_class=5",
                    "prior.support_per_class=5", "model=[vgg_small]", "callbacks=none",
                    "trainer.limit_train_batches=1.0", "attack.epsilons=[8]", "attack.figure_eps=8",
                    "attack.n_boot=20", "prior.n_components=2", "prior.bottleneck=1", "prior.ae.epochs=2",
                    "defense.adaptive.pgd.steps=1", "defense.panels=1"])
    run_task(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    # eval: val image 3 (preflight) + the one broken after it; support: the broken train file (preflight,
    # no replacement left in its class) + the one broken after it; train: the broken train file
    assert (saved["data/bad_files/eval"], saved["data/bad_files/support"], saved["data/bad_files/train"]) == (2, 2, 1)
    store = Path(cfg.paths.store_dir)
    eval_pos = 4  # position of corrupted["eval"] in the eval set
    for stage in ("attack", "defense"):
        df = pd.read_parquet(next(store.glob(f"{stage}/*/outcomes.parquet")))
        assert sorted(df["index"].unique()) == [i for i in range(7) if i != eval_pos], stage
    feats = torch.load(next(store.glob("features/*/features.pt")), weights_only=True)
    assert feats["indices"].tolist() == list(range(1, 19))  # 19 support images, position 0 broken


def test_decode_check_is_cached_by_name_size_and_time(tmp_path, monkeypatch):
    fake = make_fake_imagenet(tmp_path / "imagenet", num_classes=3, per_class_train=1, num_val=6)
    paths = [str(p) for p in fake.val_files]
    calls = []
    real = imagefiles.check_image
    monkeypatch.setattr(imagefiles, "check_image", lambda p, c="decode": calls.append(p) or real(p, c))
    first = find_bad(paths, cache_dir=tmp_path / "cache")
    assert first == {2: first[2]} and len(calls) == 6
    calls.clear()
    assert find_bad(paths, cache_dir=tmp_path / "cache") == first and calls == []  # nothing decoded again
    _corrupt(Path(paths[0]))  # a changed file (size, time) invalidates its chunk
    assert sorted(find_bad(paths, cache_dir=tmp_path / "cache")) == [0, 2] and len(calls) == 6


def test_a_fully_cached_run_decodes_nothing_and_lists_train_files_once(make_cfg, tmp_path, monkeypatch):
    fake = make_fake_imagenet(tmp_path / "imagenet", num_classes=3, per_class_train=4, num_val=6)
    over = ["experiment=paper_imagenet", "stages=[attack,prior,defense]", "target_model=null",
                    f"data.root={fake.root}", *SMALL, "data.support_per_class=4",
            "prior.support_per_class=4", "model=[vgg_small]", "model.vgg_small.train=null", "attack.epsilons=[8]",
            "attack.figure_eps=8", "attack.n_boot=20", "prior.n_components=2", "prior.bottleneck=1",
            "prior.ae.epochs=1", "defense.adaptive.pgd.steps=0", "defense.panels=1"]
    run_task(make_cfg(over))
    checked, listed = [], []
    real_check, real_train = imagefiles.check_image, ImageNetDataModule.train_files
    monkeypatch.setattr(imagefiles, "check_image", lambda p, c="decode": checked.append(p) or real_check(p, c))
    monkeypatch.setattr(ImageNetDataModule, "train_files", lambda self: listed.append(1) or real_train(self))
    run_task(make_cfg(over))
    # the support set's content key needs the file list (sizes, mtimes), read once; no image is decoded
    assert checked == [] and len(listed) <= 1


def test_missing_weights_are_reported_before_any_image_is_read(make_cfg, tmp_path, monkeypatch):
    fake = make_fake_imagenet(tmp_path / "imagenet", num_classes=1000, per_class_train=0, num_val=3)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))

    def no_reading(*args, **kwargs):
        raise AssertionError("an image was read before the weights were checked")

    monkeypatch.setattr(imagefiles, "check_image", no_reading)
    monkeypatch.setattr(imagefiles, "load_image", no_reading)
    monkeypatch.setattr(ImageFileDataset, "__init__", no_reading)
    with pytest.raises(Exception, match="ImageNet weights for vgg19 not found") as err:  # via hydra's instantiate
        run_task(make_cfg(["experiment=paper_imagenet", f"data.root={fake.root}"]))
    assert isinstance(err.value.__cause__, CheckpointError)
