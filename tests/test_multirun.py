"""A Hydra multirun sweep over the prior's settings writes one summary table across its jobs, with the
default sweep directory (no ``hydra.sweep.dir`` override), from the working directory or ADVPRIOR_ROOT."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT

SWEEP = ["-m", "debug=fast", "logger=[csv]", "model=[shallow]", "stages=[prior]", "prior.feature_layer=logits",
         "prior.n_components=4", "prior.bottleneck=2", "prior.ae.epochs=2", "prior.bandwidth=0.5,scott"]


@pytest.mark.parametrize("where", ["cwd", "env"])
def test_multirun_sweep_writes_a_summary_across_jobs(tmp_path, where):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HOME=str(tmp_path))
    env.pop("ADVPRIOR_ROOT", None)
    root, cwd = tmp_path / "root", tmp_path / "elsewhere"
    cwd.mkdir()
    if where == "env":
        env["ADVPRIOR_ROOT"] = str(root)
    else:
        cwd = root
        cwd.mkdir()
    proc = subprocess.run([sys.executable, "-m", "advprior", *SWEEP], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((root / "logs" / "run" / "multiruns").iterdir())
    assert len(sweeps) == 1
    df = pd.read_csv(sweeps[0] / "summary.csv")
    assert len(df) == 2
    assert sorted(df["prior.bandwidth"].astype(str)) == ["0.5", "scott"]
    assert df["prior/bandwidth_mean"].notna().all()
    assert df.loc[df["prior.bandwidth"].astype(str) == "0.5", "prior/bandwidth_mean"].iloc[0] == 0.5
