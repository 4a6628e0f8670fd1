"""The ``activations`` stage end to end (invariants only), its resume, its store key, and DDP == one process."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from advprior.analysis.lit_activations import ActivationChangeModule, merge_rank_shards
from advprior.analysis.outcomes import read_outcomes
from advprior.cli import run_task
from advprior.context import RunContext
from advprior.data.digits import DigitsDataModule, TensorImageDataset
from advprior.models.vgg_small import build_vgg_small
from advprior.stages.activations import activations_key
from advprior.store import ArtifactStore

TINY = ["stages=[activations]", "data.eval_subset=24", "attack.epsilons=[0,0.85,32]", "attack.figure_eps=32",
        "attack.n_boot=100", "attack.high_conf_threshold=0.0", "activations.examples_per_category=2"]


def test_stage_end_to_end_invariants(make_cfg, caplog, one_torch_thread):
    caplog.set_level("INFO", logger="advprior.stages")
    cfg = make_cfg(TINY)
    metrics = run_task(cfg)
    run = Path(cfg.paths.output_dir)
    table = pd.read_parquet(run / "activations" / "layer_change.parquet")
    outcomes = read_outcomes(run / "attack" / "outcomes.parquet")
    layers = {"vgg_small": 13, "shallow": 1}
    assert len(table) == 3 * 24 * sum(layers.values())
    assert (table.groupby(["model", "eps", "layer"])["index"].nunique() == 24).all()
    zero = table[table["eps"] == 0]
    assert (zero["abs_change"] == 0).all() and (zero["rel_change"] == 0).all()  # FGSM at eps 0 changes nothing
    assert (table["abs_change"] >= 0).all() and (table["norm_clean"] >= 0).all()
    live = table["norm_clean"] > 0
    np.testing.assert_allclose(table.loc[live, "rel_change"], table.loc[live, "abs_change"] / table.loc[live, "norm_clean"])
    assert table["rel_change"].isna().equals(~live & (table["abs_change"] > 0))
    # the study's adversarial images, recomputed bit for bit: the same predictions and probabilities
    joined = table.merge(outcomes, on=["model", "eps", "index"], suffixes=("", "_study"))
    assert len(joined) == len(table)
    for col in ("adv_top1", "adv_top1_prob", "label_changed", "high_confidence"):
        assert (joined[col] == joined[f"{col}_study"]).all(), col
    assert (joined["category"].astype(str) == joined["category_study"].astype(str)).all()
    assert "differ from the attack study" not in caplog.text
    for model, n in layers.items():
        depth = table[table.model == model].groupby("layer")["depth"].first()
        assert sorted(depth.tolist()) == list(range(1, n + 1))

    summary = pd.read_csv(run / "activations" / "layer_change.csv")
    allrows = summary[summary["category"] == "all"]
    assert len(allrows) == 3 * sum(layers.values())
    assert ((allrows["n"] + allrows["n_undefined"]) == 24).all()
    for r in allrows.itertuples():
        g = table[(table.model == r.model) & (table.eps == r.eps) & (table.layer == r.layer)]["rel_change"]
        assert r.rel_change_mean == pytest.approx(g.mean())  # pandas' mean skips the undefined (NaN) rows
        if np.isfinite(r.rel_change_low):
            assert r.rel_change_low <= r.rel_change_mean + 1e-12 <= r.rel_change_high + 2e-12
        key = f"activations/{r.model}/eps={r.eps:.4g}/{r.layer}/rel_change"
        assert metrics[key] == pytest.approx(r.rel_change_mean, nan_ok=True)
    cats = summary[summary["category"] != "all"]
    for r in cats.drop_duplicates(["model", "eps", "category"]).itertuples():
        n_cat = (outcomes[(outcomes.model == r.model) & (outcomes.eps == r.eps)]["category"].astype(str)
                 == r.category).sum()
        assert r.n + r.n_undefined == n_cat

    ex = pd.read_csv(run / "activations" / "examples.csv")
    fig_eps = 32 / 255
    target = outcomes[(outcomes.model == "vgg_small") & np.isclose(outcomes.eps, fig_eps)].set_index("index")
    assert set(ex["layer"].unique()) <= {"conv1_2", "conv3_1", "conv5_1"}
    for (cat, k), g in ex.groupby(["category", "k"]):
        assert len(g) == 3 and g["index"].nunique() == 1 and k < 2
        o = target.loc[int(g["index"].iloc[0])]
        assert o["high_confidence"] and str(o["category"]) == cat
        assert (g["clean_label"] == o["clean_top1"]).all() and (g["adv_label"] == o["adv_top1"]).all()
        assert g["adv_prob"].iloc[0] == pytest.approx(o["adv_top1_prob"])
        others = target[target.high_confidence & (target.category.astype(str) == cat)]
        assert len(ex[ex.category == cat]) // 3 == min(2, len(others))
        chosen = ex.loc[ex.category == cat, "adv_prob"]
        assert others.loc[~others.index.isin(ex["index"]), "adv_top1_prob"].le(chosen.min() + 1e-12).all()
        assert (g["filter"] >= 0).all() and (g["filter_norm"] >= 0).all()
        assert (run / "figures" / g["figure"].iloc[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((run / "figures").glob("activations_example_*.png"))) == ex["figure"].nunique()
    assert (run / "figures" / "activations_depth.png").is_file()

    caplog.clear()
    again = run_task(make_cfg(TINY))
    assert "reusing layer table" in caplog.text
    assert again["activations/vgg_small/eps=0.1255/fc8/rel_change"] == pytest.approx(
        metrics["activations/vgg_small/eps=0.1255/fc8/rel_change"], nan_ok=True)


def test_interrupted_stage_resumes_to_the_uninterrupted_result(make_cfg, monkeypatch, caplog, one_torch_thread):
    over = TINY + ["attack.shard_size=8", "model=[vgg_small]"]
    calls = {"n": 0}
    real = ActivationChangeModule.on_test_epoch_end

    def crash_on_third(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        real(self)

    monkeypatch.setattr(ActivationChangeModule, "on_test_epoch_end", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_task(make_cfg(over))
    monkeypatch.setattr(ActivationChangeModule, "on_test_epoch_end", real)
    caplog.set_level("INFO", logger="advprior.stages.activations")
    cfg = make_cfg(over)
    run_task(cfg)
    assert caplog.text.count("already done, skipping") == 2
    run = Path(cfg.paths.output_dir)
    resumed = pd.read_parquet(run / "activations" / "layer_change.parquet")
    resumed_ex = pd.read_csv(run / "activations" / "examples.csv")
    store = Path(cfg.paths.store_dir)
    for stage in ("activations", "activation_examples"):
        shutil.rmtree(store / stage)  # the models and the study stay: only this stage runs afresh
    caplog.clear()
    run_task(make_cfg(over))
    assert "already done" not in caplog.text
    pd.testing.assert_frame_equal(resumed, pd.read_parquet(run / "activations" / "layer_change.parquet"))
    pd.testing.assert_frame_equal(resumed_ex, pd.read_csv(run / "activations" / "examples.csv"))


def test_key_follows_what_the_table_depends_on(make_cfg):
    def key(overrides):
        cfg = make_cfg(overrides)
        return activations_key(RunContext(cfg=cfg, run_dir=Path(cfg.paths.output_dir),
                                          store=ArtifactStore(cfg.paths.store_dir)))

    base = key([])
    for same in (["activations.layers=[conv1_1]"], ["activations.figure_eps=8"],
                 ["activations.examples_per_category=5"], ["attack.n_boot=7"], ["attack.figure_eps=8"],
                 ["data.num_workers=1"], ["activations.epsilons=[0.85,2,4,8,16,32]"]):
        assert key(same) == base, same
    for differ in (["activations.epsilons=[0.85]"], ["activations.change_layers=[fc6]"],
                   ["attack.labels=predicted"], ["seed=1"], ["model.vgg_small.dropout=0.1"],
                   ["data.eval_subset=10"], ["attack.epsilons=[0.85,8]"], ["model=[vgg_small]"]):
        assert key(differ) != base, differ


def test_settings_are_checked_against_the_study_and_the_models(make_cfg):
    from advprior.stages.activations import make_plan
    from advprior.stages.train import build_model
    from advprior.validation import ConfigError

    def plan(overrides):
        cfg = make_cfg(overrides)
        ctx = RunContext(cfg=cfg, run_dir=Path(cfg.paths.output_dir), store=ArtifactStore(cfg.paths.store_dir))
        ctx.models = {name: build_model(cfg.model[name], ctx.datamodule).freeze() for name in cfg.model}
        return make_plan(ctx)

    p = plan(["activations.change_layers=[fc6,logits]", "activations.epsilons=[0.85,8]"])
    assert p.change_layers == {"vgg_small": ["fc6"], "shallow": ["logits"]}  # each model records what it has
    assert p.epsilons == [0.85 / 255, 8 / 255] and p.figure_eps == 0.85 / 255
    assert plan([]).change_layers["vgg_small"][-3:] == ["fc6", "fc7", "fc8"]
    bad = {
        "activations.change_layers=[conv9_9]": "activations.change_layers",
        "activations.epsilons=[3]": "activations.epsilons=3 is not one of attack.epsilons",
        "activations.figure_eps=5": "activations.figure_eps",
        "activations.epsilons=[8]": "figure eps 0.85 is not among activations.epsilons",
        "activations.layers=[fc6]": "no spatial maps",
        "activations.layers=[conv9_9]": "set activations.layers=",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            plan([override])
    assert plan(["activations.layers=[]", "activations.epsilons=[8]"]).examples_per_category == 0


def _evaluate(out: Path, strategy: str, devices: int) -> tuple[pd.DataFrame, dict]:
    torch.manual_seed(0)
    model = build_vgg_small(10, widths=(4, 4, 8, 8, 8), hidden=16, dropout=0.0).eval()
    test = DigitsDataModule(seed=0).split("test")
    ds = TensorImageDataset(test.images[:13], test.labels[:13])  # odd: the distributed sampler pads
    # batches of one image: FGSM's gradient is then the same whichever rank a picture lands on
    module = ActivationChangeModule({"m": model}, [1 / 255, 8 / 255], {"m": ["conv1_2", "conv5_1", "fc8"]}, out,
                                    map_model="m", map_layers=["conv1_2", "conv3_1"], example_indices=[0, 7, 12],
                                    figure_eps=8 / 255)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    trainer.test(module, dataloaders=DataLoader(ds, batch_size=1), verbose=False)
    return merge_rank_shards(out)


@pytest.mark.ddp
def test_ddp_two_processes_give_the_single_process_results(tmp_path):
    single, ex1 = _evaluate(tmp_path / "single", "auto", 1)
    ddp, ex2 = _evaluate(tmp_path / "ddp", "ddp_spawn", 2)
    assert len(list((tmp_path / "ddp").glob("layer_change.rank*.parquet"))) == 2
    assert len(ddp) == len(single) == 2 * 13 * 3  # every image once per eps and layer, padding dropped
    pd.testing.assert_frame_equal(ddp, single)
    assert ex1["index"].tolist() == ex2["index"].tolist() == [0, 7, 12]
    for k in ex1:
        assert torch.equal(ex1[k], ex2[k]), k
