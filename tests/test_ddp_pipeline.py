"""The whole pipeline under DDP (2 CPU processes, gloo) gives what one process gives, for frozen models:
attack outcomes, feature cache, prior and defense outcomes (integer columns exactly, floats within 1e-5);
and ``trainer=ddp`` works inside a Hydra multirun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from advprior.cli import run_task
from advprior.context import RunContext
from advprior.stages.train import build_model
from advprior.store import ArtifactStore
from conftest import ROOT

try:
    from imagenet_fixture import make_fake_imagenet
except ImportError:  # tests/ imported as a package
    from tests.imagenet_fixture import make_fake_imagenet

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
# every stage, at sizes where both ranks get work (eval batches of 2 in shards of 4)
STAGES = ["attack.epsilons=[2,8]", "attack.figure_eps=2", "attack.n_boot=20", "attack.shard_size=4",
          "data.eval_batch_size=2", "prior.n_components=2", "prior.bottleneck=1", "prior.ae.epochs=2",
          "prior.shard_size=8", "defense.adaptive.pgd.steps=1", "defense.panels=1", "defense.shard_size=4"]


def cli(args: list[str], root: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), ADVPRIOR_ROOT=str(root), HOME=str(root))
    proc = subprocess.run([sys.executable, "-m", "advprior", *args], env=env, cwd=root, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "terminate called" not in proc.stderr
    if any(a.startswith("trainer.devices=") for a in args):  # the ranks really ran
        assert "distributed: 2 processes (gloo)" in proc.stdout + proc.stderr
    return proc


def stored(root: Path, stage: str, name: str) -> Path:
    found = list((root / "logs" / "store" / stage).glob(f"*/{name}"))
    assert len(found) == 1, found
    return found[0]


def assert_tables_match(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for c in a.columns:
        if a[c].dtype.kind == "f":
            pd.testing.assert_series_equal(a[c], b[c], atol=1e-5, rtol=0, check_dtype=False)
        else:
            pd.testing.assert_series_equal(a[c].astype(str), b[c].astype(str))


def assert_runs_match(single: Path, ddp: Path) -> None:
    for stage in ("attack", "defense"):
        assert_tables_match(pd.read_parquet(stored(single, stage, "outcomes.parquet")),
                            pd.read_parquet(stored(ddp, stage, "outcomes.parquet")))
    assert_tables_match(pd.read_parquet(stored(single, "attack", "transfer.parquet")),
                        pd.read_parquet(stored(ddp, "attack", "transfer.parquet")))
    fa, fb = (torch.load(stored(r, "features", "features.pt"), weights_only=True) for r in (single, ddp))
    assert torch.equal(fa["labels"], fb["labels"]) and torch.equal(fa["indices"], fb["indices"])
    torch.testing.assert_close(fa["features"], fb["features"], atol=1e-5, rtol=0)
    pa, pb = (torch.load(stored(r, "prior", "prior.pt"), weights_only=True) for r in (single, ddp))
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], atol=1e-5, rtol=0)
    # rank 0 alone wrote the run's outputs, with the same metrics
    ma, mb = (json.loads(next(r.rglob("metrics.json")).read_text()) for r in (single, ddp))
    assert ma.keys() == mb.keys()
    for k in ma:
        # the activations stage recomputes FGSM in Lightning's DistributedSampler batches (not the study's
        # rank-independent blocks), so its numbers may differ under DDP: it is only required to run
        if not k.startswith(("time/", "activations/")) and not k.endswith("fit_seconds"):
            assert ma[k] == pytest.approx(mb[k], abs=1e-5, nan_ok=True), k


@pytest.mark.ddp
def test_vgg_small_from_a_checkpoint_two_processes_equal_one(make_cfg, tmp_path, one_torch_thread):
    """The default-suite version: digits, vgg_small with fixed random weights read from a checkpoint; every
    stage of the pipeline runs (fooling: rank 0 alone; activations: without races)."""
    cfg = make_cfg(sub="probe")
    torch.manual_seed(0)
    ckpt = tmp_path / "vgg_small.pt"
    torch.save(build_model(cfg.model.vgg_small, RunContext(cfg, tmp_path, ArtifactStore(tmp_path)).datamodule)
               .state_dict(), ckpt)
    over = ["model=[vgg_small]", f"model.vgg_small.checkpoint={ckpt}", "model.vgg_small.train=null",
            "data.eval_subset=10", "data.support_per_class=5", *STAGES]
    run_task(make_cfg(over, sub="single"))
    cli(["debug=fast", "logger=[csv]", *over, *DDP], tmp_path / "ddp")
    assert_runs_match(tmp_path / "single", tmp_path / "ddp")


@pytest.mark.ddp
@pytest.mark.slow
def test_random_vgg19_on_a_fake_imagenet_two_processes_equal_one(tmp_path):
    """The paper's path: torchvision VGG-19 (random weights, 32x32 crops) on the generated ImageNet tree,
    with DataLoader workers; the single run goes through the same command line."""
    fake = make_fake_imagenet(tmp_path / "imagenet", num_classes=4, per_class_train=4, num_val=10)
    over = ["experiment=paper_imagenet", "stages=[attack,prior,defense]", f"data.root={fake.root}",
            "data.eval_subset=9", "data.num_workers=1",
            "data.image_size=32", "data.resize_size=36", "data.support_per_class=4",
            "prior.support_per_class=4", "model=[vgg19]", "model.vgg19.weights=null", "logger=[csv]",
            "debug=fast", *STAGES]
    for name in ("single", "ddp"):
        cli(over + (DDP if name == "ddp" else []), tmp_path / name)
    assert_runs_match(tmp_path / "single", tmp_path / "ddp")
    df = pd.read_parquet(stored(tmp_path / "ddp", "attack", "outcomes.parquet"))
    assert sorted(df["index"].unique()) == list(range(8))  # 9 files, the corrupt one dropped at preflight


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_inside_a_multirun(tmp_path):
    """Each job of the sweep starts its own second rank for itself (not the whole sweep again)."""
    sweep = tmp_path / "sweep"
    cli(["-m", "debug=fast", "logger=[wandb,csv]", "model=[shallow]", "stages=[prior]", "prior.feature_layer=logits",
         "prior.n_components=4", "prior.bottleneck=2", "prior.ae.epochs=2", "prior.bandwidth=0.5,scott",
         f"hydra.sweep.dir={sweep}", *DDP], tmp_path)
    df = pd.read_csv(sweep / "summary.csv")
    assert sorted(df["prior.bandwidth"].astype(str)) == ["0.5", "scott"]
    assert df.loc[df["prior.bandwidth"].astype(str) == "0.5", "prior/bandwidth_mean"].iloc[0] == 0.5
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # no job of the ranks' own
    assert len(list((tmp_path / "logs" / "store" / "features").glob("*/_done.json"))) == 1  # shared by both
    for job in ("0", "1"):  # one W&B run per job: rank 1 logs nothing
        assert len(list((sweep / job / "wandb").glob("offline-run-*"))) == 1


@pytest.mark.slow
def test_a_parallel_sweep_runs_its_jobs_at_once(tmp_path):
    """hydra/launcher=joblib: two jobs in two worker processes (on CPUs: no GPU slot to claim)."""
    sweep = tmp_path / "sweep"
    proc = cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "debug=fast", "logger=[csv]",
                "model=[shallow]", "stages=[train]", "seed=0,1", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    df = pd.read_csv(sweep / "summary.csv")
    assert sorted(df["seed"].astype(int)) == [0, 1] and df["train/shallow/test_acc"].between(0, 1).all()
