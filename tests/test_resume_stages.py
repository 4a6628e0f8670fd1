"""A run killed inside the feature stage, then inside the defense stage, resumes to the results of a run
that was never interrupted (the kill is simulated as in test_feature_cache_resumes_after_interrupt)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from advprior.cli import run_task
from advprior.context import RunContext
from advprior.loops import LoopModule
from advprior.stages.train import build_model
from advprior.store import ArtifactStore


def _only(root, stage: str, name: str):
    found = list((root / "logs" / "store" / stage).glob(f"*/{name}"))
    assert len(found) == 1, found
    return found[0]


def test_kills_inside_features_and_defense_resume_to_the_uninterrupted_results(make_cfg, tmp_path, monkeypatch,
                                                                               caplog, one_torch_thread):
    probe = make_cfg(sub="probe")
    torch.manual_seed(0)
    ckpt = tmp_path / "vgg_small.pt"
    torch.save(build_model(probe.model.vgg_small, RunContext(probe, tmp_path, ArtifactStore(tmp_path)).datamodule)
               .state_dict(), ckpt)
    over = ["stages=[defense]", "model=[vgg_small]", f"model.vgg_small.checkpoint={ckpt}", "model.vgg_small.train=null",
            "data.eval_subset=12", "data.support_per_class=6", "data.eval_batch_size=4", "attack.epsilons=[8]",
            "attack.figure_eps=8", "attack.n_boot=20", "prior.n_components=3", "prior.bottleneck=2",
            "prior.ae.epochs=2", "prior.shard_size=16", "defense.shard_size=4", "defense.adaptive.pgd.steps=1",
            "defense.panels=1"]
    real = LoopModule._flush
    calls: dict[str, int] = {}

    def kill_at(stage: str, n: int):
        def flush(self, start, stop):
            if stage in str(self.out):
                calls[stage] = calls.get(stage, 0) + 1
                if calls[stage] == n:
                    raise RuntimeError(f"simulated kill in {stage}")
            real(self, start, stop)
        return flush

    # 60 support images in pieces of 16: killed while writing the third piece
    monkeypatch.setattr(LoopModule, "_flush", kill_at("features", 3))
    with pytest.raises(RuntimeError, match="simulated kill in features"):
        run_task(make_cfg(over, sub="killed"))
    # the rerun keeps the two feature pieces, then is killed in the defense's second piece of 4 images
    monkeypatch.setattr(LoopModule, "_flush", kill_at("defense", 2))
    caplog.set_level("INFO", logger="advprior.loops")
    with pytest.raises(RuntimeError, match="simulated kill in defense"):
        run_task(make_cfg(over, sub="killed"))
    assert "resuming, 32 of 60 images already done" in caplog.text
    monkeypatch.setattr(LoopModule, "_flush", real)
    caplog.clear()
    run_task(make_cfg(over, sub="killed"))
    assert "resuming, 4 of 12 images already done" in caplog.text

    run_task(make_cfg(over, sub="fresh"))
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    fa, fb = (torch.load(_only(r, "features", "features.pt"), weights_only=True) for r in (killed, fresh))
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    pa, pb = (torch.load(_only(r, "prior", "prior.pt"), weights_only=True) for r in (killed, fresh))
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    da, db = (pd.read_parquet(_only(r, "defense", "outcomes.parquet")) for r in (killed, fresh))
    assert len(da) == 12 and not list((killed / "logs" / "store").rglob("pieces"))
    pd.testing.assert_frame_equal(da, db)
