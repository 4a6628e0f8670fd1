"""One tiny run of the whole pipeline (``advprior debug=fast`` with two small nets and a tiny prior) through
the console entry point in a subprocess, shared by the report, terminal and W&B tests (run once per session)."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT

OVERRIDES = ["debug=fast", "model=[shallow,shallow_hidden]", "attack.epsilons=[0.85,8]", "prior.feature_layer=logits",
             "prior.n_components=4", "prior.bottleneck=2", "prior.ae.epochs=2", "defense.adaptive.pgd.steps=2"]


@dataclass
class TinyRun:
    run_dir: Path
    home: Path
    stdout: str
    stderr: str
    returncode: int


_cache: dict[str, TinyRun] = {}


def clean_env(root: Path, home: Path) -> dict[str, str]:
    """An environment without the caller's warning filters or W&B settings, everything under ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PYTHONWARNINGS", "ADVPRIOR_"))}
    env.update(HOME=str(home), ADVPRIOR_ROOT=str(root), PYTHONPATH=str(ROOT / "src"))
    return env


def run_cli(root: Path, overrides: list[str], timeout: int = 900) -> TinyRun:
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    out = root / "run"
    proc = subprocess.run([sys.executable, "-m", "advprior", *overrides, f"hydra.run.dir={out}"], cwd=root,
                          env=clean_env(root, home), capture_output=True, text=True, timeout=timeout)
    return TinyRun(out, home, proc.stdout, proc.stderr, proc.returncode)


def tiny_run(tmp_path_factory) -> TinyRun:
    if "run" not in _cache:
        _cache["run"] = run_cli(tmp_path_factory.mktemp("tiny_run"), OVERRIDES)
    r = _cache["run"]
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    return r
