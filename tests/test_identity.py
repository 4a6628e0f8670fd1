"""Content identity in keys: image folders edited in place, ImageNet files and devkit, checkpoints
overwritten, the weight-hash cache, code versions; and summary settings re-summarized from the store."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import advprior.stages.defense  # noqa: F401  (registers every KeySpec)
from advprior import identity
from advprior.analysis.outcomes import read_outcomes
from advprior.cli import run_task
from advprior.keys import SPECS, model_spec, stage_key
from advprior.models.shallow import build_shallow
from tiny_pipeline import TINY, ctx_for

try:
    from imagenet_fixture import make_fake_imagenet, write_jpeg
except ImportError:  # tests/ imported as a package
    from tests.imagenet_fixture import make_fake_imagenet, write_jpeg

CLASSES = ("ant", "bee", "cat")


def all_keys(cfg) -> dict[str, str]:
    """Every stage's key for ``cfg`` with a fresh DataModule (as a new run would build it)."""
    ctx = ctx_for(cfg)
    out = {}
    for stage, spec in SPECS.items():
        if stage in ("train", "pretrained"):  # a model's identity: one of the two applies
            out.update({f"{stage}/{m}": stage_key(ctx, spec, m) for m in cfg.model if model_spec(cfg, m) is spec})
        elif spec.per_model:
            out.update({f"{stage}/{m}": stage_key(ctx, spec, m) for m in cfg.model})
        else:
            out[stage] = stage_key(ctx, spec)
    return out


def make_tree(root: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        for j in range(per_class):
            write_jpeg(root / name / f"{name}_{j}.jpg", label, rng, size=(20, 20))
    return root


FOLDER = ["data=folder", "data.image_size=32", "data.channels=1", "data.num_workers=0"]


def _remove(root: Path) -> None:
    (root / "bee" / "bee_3.jpg").unlink()


def _relabel(root: Path) -> None:
    shutil.move(root / "bee" / "bee_3.jpg", root / "cat" / "bee_3.jpg")


def _replace(root: Path) -> None:
    write_jpeg(root / "bee" / "bee_3.jpg", 2, np.random.default_rng(7), size=(20, 20))


@pytest.mark.parametrize("edit", [_remove, _relabel, _replace], ids=["removed", "relabelled", "replaced"])
def test_editing_an_image_folder_in_place_changes_every_stage_key(make_cfg, tmp_path, edit):
    root = make_tree(tmp_path / "tree")
    over = TINY + FOLDER + [f"data.root={root}"]
    before = all_keys(make_cfg(over))
    assert set(before) == {"train/shallow_hidden", "attack", "features", "prior", "defense", "activations",
                           "activation_examples", "fooling_cppn/shallow_hidden", "fooling_direct/shallow_hidden"}
    assert all_keys(make_cfg(over)) == before  # stable while nothing changes
    edit(root)
    after = all_keys(make_cfg(over))
    assert {k for k in before if after[k] == before[k]} == set()


def test_a_relabelled_image_is_attacked_again_with_its_new_label(make_cfg, tmp_path, caplog):
    root = tmp_path / "tree"  # pre-split: val/ is the evaluation split whatever the files
    make_tree(root / "train")
    make_tree(root / "val", per_class=2)
    over = TINY + FOLDER + [f"data.root={root}", "stages=[attack]"]
    run_task(make_cfg(over, sub="a"))
    path = root / "val" / "ant" / "ant_1.jpg"
    shutil.move(path, root / "val" / "cat" / path.name)
    caplog.set_level("INFO", logger="advprior.stages")
    cfg = make_cfg(over + [f"paths.store_dir={tmp_path / 'a' / 'logs' / 'store'}"], sub="b")
    run_task(cfg)
    assert "reusing outcomes" not in caplog.text
    assert "reusing trained weights" not in caplog.text  # its test accuracy is on val too
    df = read_outcomes(Path(cfg.paths.output_dir) / "attack" / "outcomes.parquet")
    moved = df[df["path"] == str(root / "val" / "cat" / path.name)]
    assert len(moved) == 1 and int(moved["label"].iloc[0]) == CLASSES.index("cat")


def test_fake_imagenet_edits_change_exactly_the_keys_of_the_stages_reading_them(make_cfg, tmp_path):
    fake = make_fake_imagenet(tmp_path / "imagenet", num_classes=3, per_class_train=4, num_val=6, corrupt_one=False,
                              flat_val=True)
    over = ["data=imagenet", f"data.root={fake.root}", "data.eval_subset=4", "data.support_per_class=2",
            "data.num_workers=0", "data.image_size=32", "data.resize_size=36", "model=[vgg16]",
            "model.vgg16.weights=null"]
    base = all_keys(make_cfg(over))
    assert set(base) == {"pretrained/vgg16", "attack", "features", "prior", "defense", "activations",
                         "activation_examples", "fooling_cppn/vgg16", "fooling_direct/vgg16"}

    def changed() -> set[str]:
        now = all_keys(make_cfg(over))
        return {k for k in base if now[k] != base[k]}

    rng = np.random.default_rng(3)
    train_file = Path(ctx_for(make_cfg(over)).datamodule.support_dataset().paths[0])
    write_jpeg(train_file, 1, rng)  # a support image replaced: only what reads the support set
    os.utime(train_file, ns=(1, 1))  # whatever the clock: another modification time
    assert changed() == {"features", "prior", "defense"}
    base = all_keys(make_cfg(over))
    write_jpeg(fake.val_files[1], 2, rng, size=(44, 30))  # an evaluation image replaced
    assert changed() == {"attack", "defense", "activations", "activation_examples"}
    base = all_keys(make_cfg(over))
    fake.val_files[0].unlink()  # an evaluation image removed
    assert changed() == {"attack", "defense", "activations", "activation_examples"}
    base = all_keys(make_cfg(over))
    gt = fake.ground_truth.read_text().split()
    gt[2] = "1" if gt[2] != "1" else "2"  # a validation label edited in the devkit
    fake.ground_truth.write_text("\n".join(gt) + "\n")
    # the devkit (classes, hierarchy, labels) is part of every data identity; a random init does not read it
    assert changed() == {"attack", "features", "prior", "defense", "activations", "activation_examples"}


def _shallow_weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(build_shallow(10, in_channels=1, image_size=32, hidden=256).state_dict(), path)
    return path


def test_overwriting_a_checkpoint_recomputes_every_dependent_stage(make_cfg, tmp_path, caplog):
    ckpt = _shallow_weights(tmp_path / "weights.pt", seed=0)

    def over(path: Path) -> list[str]:
        return TINY + ["model.shallow_hidden.train=null", f"model.shallow_hidden.checkpoint={path}",
                       "stages=[attack,defense]", f"paths.store_dir={tmp_path / 'store'}"]

    cfg = make_cfg(over(ckpt), sub="a")
    run_task(cfg)
    keys_a = all_keys(cfg)
    first = read_outcomes(Path(cfg.paths.output_dir) / "attack" / "outcomes.parquet")
    shutil.copy(ckpt, tmp_path / "copy.pt")  # the same weights under another name: the same keys
    assert all_keys(make_cfg(over(tmp_path / "copy.pt"), sub="c")) == keys_a
    size = ckpt.stat().st_size
    _shallow_weights(ckpt, seed=1)  # other weights, same file name and size
    assert ckpt.stat().st_size == size
    caplog.set_level("INFO", logger="advprior.stages")
    cfg = make_cfg(over(ckpt), sub="b")
    run_task(cfg)
    assert all(k != keys_a[s] for s, k in all_keys(cfg).items())
    for reused in ("reusing outcomes", "reusing fitted prior", "reusing per-image results"):
        assert reused not in caplog.text
    second = read_outcomes(Path(cfg.paths.output_dir) / "attack" / "outcomes.parquet")
    assert not np.array_equal(first["clean_top1_prob"], second["clean_top1_prob"])


def test_weight_hashes_are_cached_across_processes_by_path_size_and_times(tmp_path, monkeypatch):
    calls: list[str] = []
    real = identity._hash_file
    monkeypatch.setattr(identity, "_hash_file", lambda p: calls.append(p) or real(p))
    weights, cache = _shallow_weights(tmp_path / "w.pt", 0), tmp_path / "store" / "weight_hashes.json"
    d1 = identity.weights_digest(weights, cache)
    identity._digests.clear()  # a new process: the JSON cache answers
    assert identity.weights_digest(weights, cache) == d1 and len(calls) == 1
    _shallow_weights(weights, 1)
    identity._digests.clear()
    d2 = identity.weights_digest(weights, cache)
    assert d2 != d1 and len(calls) == 2
    assert d2 == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_code_version_follows_the_declared_files_only(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    (pkg / "stages").mkdir(parents=True)
    (pkg / "stages" / "a.py").write_text("x = 1\n")
    (pkg / "other.py").write_text("y = 1\n")
    monkeypatch.setattr(identity, "PACKAGE_DIR", pkg)
    identity.code_version.cache_clear()
    v1 = identity.code_version(("stages/",))
    (pkg / "other.py").write_text("y = 2\n")
    identity.code_version.cache_clear()
    assert identity.code_version(("stages/",)) == v1
    (pkg / "stages" / "a.py").write_text("x = 2\n")
    identity.code_version.cache_clear()
    assert identity.code_version(("stages/",)) != v1
    with pytest.raises(FileNotFoundError, match="nope.py"):
        identity.code_version(("nope.py",))
    identity.code_version.cache_clear()


def test_every_declared_code_path_exists():
    for spec in SPECS.values():
        assert identity.code_version(spec.code)


def test_a_new_threshold_resummarizes_the_stored_table_like_a_fresh_run(make_cfg, tmp_path, caplog):
    """attack.high_conf_threshold, refocus_min_prob and conatural.* change only the summary: a second run
    reuses the stored table and gives exactly what a fresh run with those settings gives."""
    study = ["stages=[attack]", "model=[shallow]", "data.eval_subset=64", "attack.epsilons=[4,16]",
             "attack.figure_eps=4", "attack.n_boot=50"]
    run_task(make_cfg(study, sub="first"))
    new = ["attack.high_conf_threshold=0.8", "attack.refocus_min_prob=0.2", "attack.conatural.nearest_k=3"]
    caplog.set_level("INFO", logger="advprior.stages")
    reused = make_cfg(study + new + [f"paths.store_dir={tmp_path / 'first' / 'logs' / 'store'}"], sub="reused")
    m_reused = run_task(reused)
    assert "reusing outcomes" in caplog.text
    fresh = make_cfg(study + new, sub="fresh")
    m_fresh = run_task(fresh)
    for name in ("outcomes.parquet", "summary.csv", "categories.csv", "transfer.csv"):
        a, b = (Path(c.paths.output_dir) / "attack" / name for c in (reused, fresh))
        if name.endswith(".parquet"):
            pd.testing.assert_frame_equal(read_outcomes(a), read_outcomes(b))
        elif b.exists():
            pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))
    assert {k: v for k, v in m_reused.items() if not k.startswith("time/") and "seconds" not in k} == \
        pytest.approx({k: v for k, v in m_fresh.items() if not k.startswith("time/") and "seconds" not in k},
                      nan_ok=True)
    df = read_outcomes(Path(reused.paths.output_dir) / "attack" / "outcomes.parquet")
    assert (df["high_confidence"] == (df["label_changed"] & (df["adv_top1_prob"] > 0.8))).all()
