"""A short training run end to end: metrics, caching by config, seed determinism, W&B offline."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from advprior.cli import run_task
from advprior.utils.wandb_offline import read_offline_run
from conftest import ROOT


def test_short_training_run_writes_metrics_and_reuses_models(make_cfg, caplog):
    cfg = make_cfg(["stages=[train]"])
    m = run_task(cfg)
    run = Path(cfg.paths.output_dir)
    saved = json.loads((run / "metrics.json").read_text())
    assert 0 <= saved["train/vgg_small/test_acc"] <= 1 and "train/shallow/test_acc" in saved
    assert (run / "config_tree.txt").read_text().startswith("CONFIG")
    assert (run / "models" / "vgg_small.pt").is_file()
    assert (run / "csv" / "metrics.csv").is_file()
    # the same config again: nothing is retrained, the cached weights and metrics come back
    caplog.set_level("INFO", logger="advprior.stages.train")
    m2 = run_task(make_cfg(["stages=[train]"]))
    assert "reusing trained weights" in caplog.text
    assert m2["train/vgg_small/test_acc"] == m["train/vgg_small/test_acc"]


def test_seed_zero_gives_identical_models_twice(make_cfg):
    states = []
    for sub in ("a", "b"):
        cfg = make_cfg(["stages=[train]", "model=[vgg_small]", "trainer.limit_train_batches=3"], sub=sub)
        run_task(cfg)
        states.append(torch.load(Path(cfg.paths.output_dir) / "models" / "vgg_small.pt", weights_only=True))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    cfg = make_cfg(["stages=[train]", "model=[vgg_small]", "trainer.limit_train_batches=3", "seed=1"], sub="c")
    run_task(cfg)
    other = torch.load(Path(cfg.paths.output_dir) / "models" / "vgg_small.pt", weights_only=True)
    assert not torch.equal(other["net.fc6.weight"], states[0]["net.fc6.weight"])


def test_cli_with_wandb_offline_keeps_everything_in_the_run(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "ADVPRIOR_ROOT": str(tmp_path),
           "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "advprior", "debug=fast", "logger=[wandb,csv]", "stages=[train]",
         "model=[shallow]", f"hydra.run.dir={out}"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir())
    logged = read_offline_run(runs[0])
    saved = json.loads((out / "metrics.json").read_text())
    assert logged["summary"]["train/shallow/test_acc"] == saved["train/shallow/test_acc"]
    assert any("train/shallow/loss_epoch" in row for row in logged["history"])
    # the FGSM eval callback tracked robustness while the model trained
    assert 0 <= logged["summary"]["val_attack/shallow/eps=0.003333/adv_acc"] <= 1
    leaked = [p for p in home.rglob("*") if "wandb" in str(p.relative_to(home)).lower()]
    assert not leaked, leaked


def test_a_shorter_training_is_not_mistaken_for_a_longer_one(make_cfg):
    from advprior.context import RunContext
    from advprior.stages.train import model_identity
    from advprior.store import ArtifactStore

    def key(over):
        cfg = make_cfg(over)
        return model_identity(RunContext(cfg=cfg, run_dir=Path(cfg.paths.output_dir),
                                         store=ArtifactStore(cfg.paths.store_dir)), "vgg_small")

    base = key([])
    assert key(["trainer.max_epochs=2"]) != base
    assert key(["trainer.limit_train_batches=5"]) != base
    assert key(["model.vgg_small.train.optimizer.lr=0.01"]) != base
    assert key(["seed=1"]) != base
    assert key(["trainer.enable_progress_bar=true", "data.eval_subset=10", "data.num_workers=2"]) == base
