"""A Hydra multirun sweep over the prior's settings writes one summary table across its jobs."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd

from conftest import ROOT


def test_multirun_sweep_writes_a_summary_across_jobs(tmp_path):
    env = dict(os.environ, ADVPRIOR_ROOT=str(tmp_path), PYTHONPATH=str(ROOT / "src"), HOME=str(tmp_path))
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "advprior", "-m", "debug=fast", "logger=[csv]", "model=[shallow]",
           "stages=[prior]", "prior.feature_layer=logits", "prior.n_components=4", "prior.bottleneck=2",
           "prior.ae.epochs=2", "prior.bandwidth=0.5,scott", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(sweep / "summary.csv")
    assert len(df) == 2
    assert sorted(df["prior.bandwidth"].astype(str)) == ["0.5", "scott"]
    assert df["prior/bandwidth_mean"].notna().all()
    assert df.loc[df["prior.bandwidth"].astype(str) == "0.5", "prior/bandwidth_mean"].iloc[0] == 0.5
