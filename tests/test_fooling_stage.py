"""The ``fooling`` stage end to end on the digits default (tiny budget), its store key and its resume."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from advprior.cli import run_task
from advprior.context import RunContext
from advprior.fooling import map_elites as me
from advprior.fooling.scoring import SCORE_COLUMNS
from advprior.stages.fooling import fooling_key
from advprior.store import ArtifactStore
from advprior.utils.io import load_torch
from advprior.validation import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["stages=[fooling]", "fooling.population=12", "fooling.generations=3", "fooling.batch_size=8",
        "fooling.grid_samples=4"]
SUMMARY_COLUMNS = ["source", "target", "encoding", "n", "source_conf_mean", "source_conf_mean_low",
                   "source_conf_mean_high", "transfer_rate", "transfer_rate_low", "transfer_rate_high",
                   "target_conf_mean", "target_conf_mean_low", "target_conf_mean_high", "target_bin_prob_mean",
                   "target_bin_prob_mean_low", "target_bin_prob_mean_high", "share_above_0.5", "share_above_0.99"]


def test_fooling_stage_end_to_end(make_cfg, caplog):
    cfg = make_cfg(TINY)
    metrics = run_task(cfg)
    run = Path(cfg.paths.output_dir)
    scores = pd.read_csv(run / "fooling" / "scores.csv")
    assert list(scores.columns) == list(SCORE_COLUMNS)
    # every elite (10 classes, both encodings, both sources) scored by its source and by the other model
    assert len(scores) == 2 * 2 * 10 * 2
    assert set(map(tuple, scores[["source", "scored_by"]].drop_duplicates().to_numpy())) == {
        ("vgg_small", "vgg_small"), ("vgg_small", "shallow"), ("shallow", "shallow"), ("shallow", "vgg_small")}
    assert scores[["top1_prob", "bin_class_prob"]].stack().between(0, 1).all()
    summary = pd.read_csv(run / "fooling" / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS and len(summary) == 4
    for _, r in summary.iterrows():
        g = scores[(scores.source == r.source) & (scores.encoding == r.encoding)]
        src = g[g.scored_by == r.source].set_index("bin_class").sort_index()
        tgt = g[g.scored_by == r.target].set_index("bin_class").sort_index()
        assert r.transfer_rate == pytest.approx((src.top1 == tgt.top1).mean())
        assert r.transfer_rate_low <= r.transfer_rate <= r.transfer_rate_high
        assert r.target_conf_mean == pytest.approx(tgt.top1_prob.mean())
        assert r["share_above_0.5"] == pytest.approx((src.bin_class_prob > 0.5).mean())
        key = f"fooling/{r.source}/{r.target}/{r.encoding}/transfer_rate"
        assert metrics[key] == pytest.approx(r.transfer_rate)
        assert (run / "figures" / f"fooling_{r.source}_to_{r.target}_{r.encoding}.png").is_file()
    # the source's rescoring of its stored elites equals the probabilities the search recorded
    ctx = RunContext(cfg=cfg, run_dir=run, store=ArtifactStore(cfg.paths.store_dir))
    for source in ("vgg_small", "shallow"):
        for enc in ("cppn", "direct"):
            out = ctx.store.root / "fooling" / fooling_key(ctx, source, enc)
            elites = pd.read_csv(out / "elites.csv")
            mine = scores[(scores.source == source) & (scores.encoding == enc) & (scores.scored_by == source)]
            assert elites["bin_class"].tolist() == mine["bin_class"].tolist() == list(range(10))
            assert elites["bin_class_prob"].to_numpy() == pytest.approx(mine["bin_class_prob"].to_numpy(), abs=1e-5)
            saved = load_torch(out / "elites.pt")
            assert saved["images"].shape == (10, 1, 32, 32) and saved["images"].dtype == torch.float32
            assert 0 <= float(saved["images"].min()) and float(saved["images"].max()) <= 1
            genomes = json.loads((out / "genomes.json").read_text())
            assert [g["bin_class"] for g in genomes] == list(range(10))
            assert all((g["genome"] is None) == (enc == "direct") for g in genomes)
            assert not (out / "checkpoint.pt").exists()
    progress = pd.read_csv(run / "fooling" / "progress.csv")
    assert len(progress) == 4 * 3 and progress.groupby(["source", "encoding"])["evaluations"].max().eq(36).all()
    caplog.set_level("INFO", logger="advprior.stages.fooling")
    again = run_task(make_cfg(TINY))
    assert caplog.text.count("reusing the") == 4
    assert again["fooling/shallow/vgg_small/cppn/transfer_rate"] == metrics["fooling/shallow/vgg_small/cppn/transfer_rate"]


def test_fooling_key_changes_with_what_the_elites_depend_on(make_cfg):
    def key(over, source="vgg_small", encoding="cppn"):
        cfg = make_cfg(over)
        return fooling_key(RunContext(cfg=cfg, run_dir=Path(cfg.paths.output_dir),
                                      store=ArtifactStore(cfg.paths.store_dir)), source, encoding)

    base = key([])
    for relevant in (["fooling.population=8"], ["fooling.generations=7"], ["fooling.batch_size=4"], ["seed=1"],
                     ["fooling.cppn.weight_rate=0.2"], ["fooling.cppn.activations=[sine,gaussian]"],
                     ["model.vgg_small.dropout=0.1"], ["trainer.max_epochs=2"], ["data.image_size=64"],
                     ["fooling.device=cpu"]):
        assert key(relevant) != base, relevant
    assert key([], source="shallow") != base and key([], encoding="direct") != base
    for irrelevant in (["fooling.targets=[shallow]"], ["fooling.thresholds=[0.9]"], ["fooling.grid_samples=3"],
                       ["fooling.checkpoint_every=1"], ["fooling.n_resamples=100"], ["fooling.encodings=[cppn]"],
                       ["fooling.direct.eta=5"], ["fooling.sources=[vgg_small]"], ["attack.epsilons=[2]"],
                       ["prior.bottleneck=2"], ["model.shallow.train.epochs=3"]):
        assert key(irrelevant) == base, irrelevant
    assert key(["fooling.direct.eta=5"], encoding="direct") != key([], encoding="direct")


def test_an_interrupted_stage_resumes_to_the_uninterrupted_elites(make_cfg, monkeypatch, caplog):
    over = ["stages=[fooling]", "model=[shallow]", "fooling.encodings=[cppn]", "fooling.population=8",
            "fooling.generations=6", "fooling.checkpoint_every=2", "fooling.batch_size=8"]
    fresh_cfg = make_cfg(over, sub="fresh")
    run_task(fresh_cfg)
    real, calls = me.generation_step, {"n": 0}

    def crash_in_generation_5(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(me, "generation_step", crash_in_generation_5)
    cfg = make_cfg(over, sub="crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_task(cfg)
    monkeypatch.setattr(me, "generation_step", real)
    caplog.set_level("INFO", logger="advprior.fooling")
    run_task(make_cfg(over, sub="crashed"))
    assert "resuming at generation 4" in caplog.text
    a = load_torch(Path(fresh_cfg.paths.output_dir) / "fooling" / "elites" / "shallow_cppn_elites.pt")
    b = load_torch(Path(cfg.paths.output_dir) / "fooling" / "elites" / "shallow_cppn_elites.pt")
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["bins"], b["bins"])
    ga = (Path(fresh_cfg.paths.output_dir) / "fooling" / "elites" / "shallow_cppn_genomes.json").read_text()
    gb = (Path(cfg.paths.output_dir) / "fooling" / "elites" / "shallow_cppn_genomes.json").read_text()
    assert ga == gb


@pytest.mark.parametrize("override, message", [
    ("fooling.sources=[nope]", r"fooling.sources names \['nope'\]"),
    ("fooling.population=0", "fooling.population must be a positive int"),
    ("fooling.encodings=[cppn,pixels]", "fooling.encodings must be"),
    ("fooling.cppn.activations=[sine,relu]", "fooling.cppn.activations"),
    ("fooling.direct.mutation_rate=0", "fooling.direct.mutation_rate"),
    ("+fooling.bogus=1", "bogus"),
    ("fooling.device=gpu0", "fooling.device"),
])
def test_bad_fooling_settings_fail_before_any_work(make_cfg, override, message):
    from advprior.validation import validate_config
    with pytest.raises(ConfigError, match=message):
        validate_config(make_cfg(["stages=[fooling]", override]))
