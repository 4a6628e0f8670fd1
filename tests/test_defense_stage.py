"""The prior and defense stages end to end on the digits default, and the resumable feature cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from advprior.cli import run_task
from advprior.data.digits import DigitsDataModule
from advprior.models.vgg_small import build_vgg_small
from advprior.prior.features import extract_features
from advprior.utils import io as io_mod

DEFENSE = ["stages=[defense]", "model=[vgg_small]", "data.eval_subset=24", "attack.epsilons=[0.85,16]",
           "attack.n_boot=100", "prior.ae.epochs=3", "defense.adaptive.pgd.steps=2", "defense.panels=2"]


def test_defense_end_to_end(make_cfg, caplog):
    cfg = make_cfg(DEFENSE)
    metrics = run_task(cfg)
    run = Path(cfg.paths.output_dir)
    df = pd.read_parquet(run / "defense" / "outcomes.parquet")
    assert len(df) == 2 * 24 and set(np.round(df["eps"] * 255, 6)) == {0.85, 16.0}
    summary = pd.read_csv(run / "defense" / "summary.csv")
    for col in ("base_clean_acc", "post_clean_acc", "post_adv_acc", "adaptive_fgsm_post_acc",
                "adaptive_pgd_post_acc"):
        assert summary[col].between(0, 1).all(), col
    # the detector's AUC needs at least one label change; without one it is NaN (never a made-up number)
    has_adv = summary["n_detector_adv"] > 0
    assert summary.loc[has_adv, "detector_auc"].between(0, 1).all()
    assert summary.loc[~has_adv, "detector_auc"].isna().all()
    # the mitigation rate is what the README defines, recomputed from the per-image table
    g = df[np.isclose(df["eps"], 16 / 255)]
    high = (g.base_adv_pred != g.base_clean_pred) & (g.base_adv_prob > 0.5)
    row = summary[np.isclose(summary["eps"], 16 / 255)].iloc[0]
    assert row["n_high_conf"] == high.sum()
    if high.any():
        assert row["mitigation_rate"] == pytest.approx((g.post_adv_pred[high] != g.base_adv_pred[high]).mean())
        assert row["recovery_rate"] == pytest.approx((g.post_adv_pred[high] == g.label[high]).mean())
    assert metrics["defense/eps=0.06275/post_clean_acc"] == pytest.approx(row["post_clean_acc"])
    saved = json.loads((run / "metrics.json").read_text())
    assert 0 < saved["prior/explained_variance_mean"] <= 1
    # (whether 3 epochs lower the loss depends on the CPU's arithmetic: only what holds on any CPU here)
    assert np.isfinite(saved["prior/ae_recon_loss"]) and saved["prior/ae_recon_loss_first"] >= 0
    assert (run / "figures" / "defense_panels.png").is_file()
    curve = pd.read_csv(run / "csv" / "metrics.csv")["prior/ae_recon_loss"].dropna()
    # one point per autoencoder epoch reached the run's loggers, then the stage's final value
    assert len(curve) == 3 + 1 and curve.iloc[-1] == pytest.approx(saved["prior/ae_recon_loss"])
    caplog.set_level("INFO", logger="advprior.stages")
    again = run_task(make_cfg(DEFENSE))
    assert "reusing per-image results" in caplog.text
    assert again["defense/eps=0.06275/post_adv_acc"] == metrics["defense/eps=0.06275/post_adv_acc"]
    assert again["defense/eps=0.06275/mitigation_rate"] == pytest.approx(metrics["defense/eps=0.06275/mitigation_rate"], nan_ok=True)
    caplog.clear()
    run_task(make_cfg(DEFENSE + ["defense.adaptive.pgd.steps=0"]))
    assert "reusing fitted prior" in caplog.text  # defense settings do not refit the prior...
    assert "reusing per-image results" not in caplog.text  # ...but they do re-evaluate the defense


def test_feature_cache_resumes_after_interrupt(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_vgg_small(10, widths=(4, 4, 8, 8, 8), hidden=16).eval()
    ds = DigitsDataModule(seed=0).support_dataset(per_class=5)
    fresh = extract_features(model, ds, "fc6", tmp_path / "fresh", shard_size=16)
    real, calls = io_mod.atomic_write, {"n": 0}

    def crash_on_third(path, write):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(path, write)

    monkeypatch.setattr(io_mod, "atomic_write", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_features(model, ds, "fc6", tmp_path / "cache", shard_size=16)
    monkeypatch.setattr(io_mod, "atomic_write", real)
    pieces = tmp_path / "cache" / "pieces"
    assert sorted(p.name for p in pieces.iterdir()) == ["features.000000000-000000016.pt",
                                                        "features.000000016-000000032.pt"]
    written = []
    monkeypatch.setattr(io_mod, "atomic_write", lambda path, write: written.append(path.name) or real(path, write))
    resumed = extract_features(model, ds, "fc6", tmp_path / "cache", shard_size=16)
    # only the last 18 images were computed again (two pieces), then the merged cache
    assert written == ["features.000000032-000000048.pt", "features.000000048-000000050.pt", "features.pt"]
    for k in ("features", "labels", "indices"):
        assert torch.equal(resumed[k], fresh[k])
    assert resumed["features"].shape == (50, 16) and torch.equal(resumed["indices"], torch.arange(50))
