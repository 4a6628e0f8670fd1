"""The FGSM study stage end to end, its resume and its determinism (DDP == one process: test_ddp_*.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from advprior.analysis.outcomes import read_outcomes
from advprior.cli import run_task
from advprior.loops import LoopModule
from tiny_pipeline import ctx_for

STUDY = ["stages=[attack]", "data.eval_subset=40", "attack.epsilons=[0.85,8,32]", "attack.n_boot=200"]


def test_study_end_to_end_outputs(make_cfg, caplog):
    cfg = make_cfg(STUDY)
    metrics = run_task(cfg)
    run = Path(cfg.paths.output_dir)
    df = read_outcomes(run / "attack" / "outcomes.parquet")
    assert len(df) == 2 * 3 * 40  # models x eps x images
    assert (df.groupby(["model", "eps"])["index"].nunique() == 40).all()
    # the perturbation never exceeds eps (float32 rounding of x + eps allows half an ulp)
    assert (df["linf"] <= df["eps"] + 2 ** -24).all()
    assert (df.loc[df["eps"] == 32 / 255, "linf"] > 0).all()
    for col in ("label_changed", "high_confidence"):
        assert df[col].dtype == bool
    assert not (df["high_confidence"] & ~df["label_changed"]).any()
    summary = pd.read_csv(run / "attack" / "summary.csv")
    assert set(summary["model"]) == {"vgg_small", "shallow"}
    s = summary[(summary.model == "vgg_small")].set_index("eps_255")
    d = df[(df.model == "vgg_small") & (df.eps == 8 / 255)]
    assert s.loc[8.0, "label_changed_rate"] == pytest.approx(d["label_changed"].mean())
    assert s.loc[8.0, "label_changed_rate_low"] <= s.loc[8.0, "label_changed_rate"] <= s.loc[8.0, "label_changed_rate_high"]
    assert metrics["attack/vgg_small/eps=0.003333/adv_acc"] == pytest.approx(
        df[(df.model == "vgg_small") & (df.eps == 0.85 / 255)]["adv_correct"].mean())
    paired = pd.read_csv(run / "attack" / "paired.csv")
    assert set(zip(paired.model_a, paired.model_b)) == {("vgg_small", "shallow")} and len(paired) == 3 * 4
    p = paired[(paired.eps_255 == 8.0) & (paired.metric == "label_changed_rate")].iloc[0]
    d_shallow = df[(df.model == "shallow") & (df.eps == 8 / 255)]
    assert p["diff"] == pytest.approx(d["label_changed"].mean() - d_shallow["label_changed"].mean())
    assert metrics["attack/paired/vgg_small-vs-shallow/eps=0.03137/label_changed_rate_diff"] == pytest.approx(p["diff"])
    gaps = pd.read_csv(run / "attack" / "transfer_paired.csv")
    assert set(zip(gaps.source, gaps.target)) == {("vgg_small", "shallow"), ("shallow", "vgg_small")}
    cats = pd.read_csv(run / "attack" / "categories.csv")
    assert (cats.drop(columns=["eps", "model"]).sum(axis=1) == 40).all()
    transfer = pd.read_csv(run / "attack" / "transfer.csv")
    assert {tuple(x) for x in transfer[["source", "target"]].values} == {("vgg_small", "shallow"), ("shallow", "vgg_small")}
    for name in ("attack_confidence_vgg_small", "attack_category_true", "attack_rates_vs_eps", "attack_transfer"):
        assert (run / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["attack/vgg_small/eps=0.003333/adv_acc"] == metrics["attack/vgg_small/eps=0.003333/adv_acc"]
    caplog.set_level("INFO", logger="advprior.stages.attack_study")
    run_task(make_cfg(STUDY))
    assert "reusing outcomes" in caplog.text


def test_interrupted_study_resumes_at_first_unfinished_shard(make_cfg, monkeypatch, caplog):
    over = STUDY + ["attack.shard_size=16", "model=[shallow]"]
    calls = {"n": 0}
    real = LoopModule._flush

    def crash_on_third(self, start, stop):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        real(self, start, stop)

    monkeypatch.setattr(LoopModule, "_flush", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_task(make_cfg(over))
    monkeypatch.setattr(LoopModule, "_flush", real)
    caplog.set_level("INFO", logger="advprior.loops")
    cfg = make_cfg(over)
    run_task(cfg)
    assert "resuming, 32 of 40 images already done" in caplog.text  # two shards of 16 kept
    resumed = read_outcomes(Path(cfg.paths.output_dir) / "attack" / "outcomes.parquet")
    fresh_cfg = make_cfg(over, sub="fresh")
    run_task(fresh_cfg)
    fresh = read_outcomes(Path(fresh_cfg.paths.output_dir) / "attack" / "outcomes.parquet")
    pd.testing.assert_frame_equal(resumed, fresh)


def test_same_seed_gives_the_same_table(make_cfg):
    tables = []
    for sub in ("a", "b"):
        cfg = make_cfg(STUDY + ["model=[shallow]"], sub=sub)
        run_task(cfg)
        tables.append(read_outcomes(Path(cfg.paths.output_dir) / "attack" / "outcomes.parquet"))
    pd.testing.assert_frame_equal(*tables)


def test_study_table_matches_a_direct_fgsm_on_true_labels(make_cfg):
    """The stored outcomes are exactly FGSM on the TRUE labels (the paper's setting) unless asked otherwise."""
    from advprior.attacks import FGSM
    from advprior.context import RunContext
    from advprior.stages import train
    from advprior.store import ArtifactStore

    cfg = make_cfg(STUDY + ["model=[vgg_small]"])
    run_task(cfg)
    df = read_outcomes(Path(cfg.paths.output_dir) / "attack" / "outcomes.parquet")
    ctx = RunContext(cfg=cfg, run_dir=Path(cfg.paths.output_dir), store=ArtifactStore(cfg.paths.store_dir))
    model, _ = train.train_or_load(ctx, "vgg_small")
    ds = ctx.datamodule.eval_dataset()
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    for eps in (8 / 255, 32 / 255):
        with torch.no_grad():
            pred = model(FGSM(model, eps)(x, y)).argmax(1)
        rows = df[np.isclose(df["eps"], eps)].sort_values("index")
        assert torch.equal(torch.tensor(rows["adv_top1"].to_numpy()), pred)
    pred_cfg = make_cfg(STUDY + ["model=[vgg_small]", "attack.labels=predicted"], sub="pred")
    run_task(pred_cfg)
    other = read_outcomes(Path(pred_cfg.paths.output_dir) / "attack" / "outcomes.parquet")
    model, _ = train.train_or_load(ctx_for(pred_cfg), "vgg_small")  # the same weights, from the store
    for eps in (8 / 255, 32 / 255):  # attack.labels=predicted: FGSM on the model's own predictions
        with torch.no_grad():
            pred = model(FGSM(model, eps)(x)).argmax(1)
        rows = other[np.isclose(other["eps"], eps)].sort_values("index")
        assert torch.equal(torch.tensor(rows["adv_top1"].to_numpy()), pred)
