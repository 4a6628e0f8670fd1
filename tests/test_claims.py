"""The claims aggregation across training seeds, checked by hand against the jobs' own tables, its verdict
rule, and the README script that fills generated blocks from it."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from advprior.analysis import claims as C
from conftest import ROOT

MODELS = ["vgg_small", "shallow_hidden", "shallow", "vgg_small_nodropout"]
EPS_255 = [0.85, 8.0]


def _load_script():
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "scripts" / "readme_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _job(sweep: Path, num: int, seed: int, depth_diff: float, dropout_diff: float, mitigation: float,
         models=MODELS) -> Path:
    """A finished job directory in the formats the stages write (the numbers are chosen, not trained)."""
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    cfg = {"seed": seed, "target_model": None, "model": {m: {"_target_": "x"} for m in models},
           "attack": {"figure_eps": 0.85, "scale": 255}}
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))  # Hydra keeps the order
    (d / "metrics.json").write_text(json.dumps({f"train/{m}/test_acc": 0.9 + 0.01 * seed + 0.001 * i
                                                for i, m in enumerate(models)} | {"prior/x": 1.0}))
    (d / "attack").mkdir()
    rows, paired = [], []
    for e in EPS_255:
        for i, m in enumerate(models):
            rows.append({"model": m, "eps": e / 255, "eps_255": e, "n": 100, "clean_acc": 0.95,
                         "adv_acc": 0.7 - 0.01 * i, "label_changed_rate": 0.1 * (1 + i) + 0.01 * seed + e / 100,
                         "label_changed_rate_low": 0.0, "label_changed_rate_high": 1.0,
                         "high_conf_rate": 0.05, "fooling_rate": 0.2, "mean_second_prob_high_conf": 0.1 + seed / 100})
        for a, b, diff in (("vgg_small", "shallow_hidden", depth_diff),
                           ("vgg_small", "vgg_small_nodropout", dropout_diff)):
            paired.append({"model_a": a, "model_b": b, "eps": e / 255, "eps_255": e, "metric": "label_changed_rate",
                           "a": 0.3, "b": 0.3 - diff, "diff": diff, "diff_low": diff - 0.05, "diff_high": diff + 0.05,
                           "n": 100, "method": "paired-bca"})
        # stored the other way round: the aggregation must flip the sign and swap the bounds
        paired.append({"model_a": "shallow", "model_b": "vgg_small", "eps": e / 255, "eps_255": e,
                       "metric": "label_changed_rate", "a": 0.5, "b": 0.3, "diff": -depth_diff,
                       "diff_low": -depth_diff - 0.02, "diff_high": -depth_diff + 0.04, "n": 100,
                       "method": "paired-bca"})
    pd.DataFrame(rows).to_csv(d / "attack" / "summary.csv", index=False)
    pd.DataFrame([{"eps": e / 255, "source": "shallow", "target": "vgg_small", "n": 100,
                   "fooling_rate": 0.1 * seed + e / 100} for e in EPS_255]).to_csv(d / "attack" / "transfer.csv", index=False)
    pd.DataFrame([{"source": "shallow", "target": "vgg_small", "eps": e / 255, "eps_255": e, "metric": "fooling_rate",
                   "white_box": 0.5, "transferred": 0.3, "diff": 0.2 + 0.01 * seed, "diff_low": 0.1, "diff_high": 0.3,
                   "n": 100, "method": "paired-bca"} for e in EPS_255]).to_csv(d / "attack" / "transfer_paired.csv",
                                                                             index=False)
    pd.DataFrame(paired).to_csv(d / "attack" / "paired.csv", index=False)
    (d / "defense").mkdir()
    pd.DataFrame([{"eps": e / 255, "eps_255": e, "n": 100, "base_clean_acc": 0.95, "base_clean_acc_low": 0.9,
                   "base_clean_acc_high": 0.98, "n_high_conf": 10 + seed, "mitigation_rate": mitigation,
                   "mitigation_rate_low": mitigation - 0.1, "mitigation_rate_high": mitigation + 0.1,
                   "detector_auc": 0.8, "adaptive_pgd_post_acc": 0.1 * seed, "prior_space": "per_class"}
                  for e in EPS_255]).to_csv(d / "defense" / "summary.csv", index=False)
    (d / "fooling").mkdir()
    pd.DataFrame([{"source": "shallow", "target": "vgg_small", "encoding": enc, "n": 10,
                   "source_conf_mean": 0.9 - 0.01 * seed, "transfer_rate": 0.1 * seed + 0.5 * k, "target_conf_mean": 0.3}
                  for k, enc in enumerate(("cppn", "direct"))]).to_csv(d / "fooling" / "summary.csv", index=False)
    (d / "activations").mkdir()
    pd.DataFrame([{"model": m, "eps": e / 255, "eps_255": e, "category": cat, "layer": layer, "depth": depth,
                   "n": 100, "rel_change_mean": depth * e / 100 + seed / 1000 + (cat == "true")}
                  for m in ("vgg_small", "shallow") for e in (0.0, *EPS_255) for cat in ("all", "true")
                  for depth, layer in ((1, "conv1_1"), (12, "fc6"))]).to_csv(d / "activations" / "layer_change.csv",
                                                                              index=False)
    return d


@pytest.fixture
def sweep(tmp_path):
    s = tmp_path / "sweep"
    _job(s, 0, 0, depth_diff=-0.10, dropout_diff=0.05, mitigation=0.20)
    _job(s, 1, 1, depth_diff=-0.12, dropout_diff=-0.04, mitigation=0.15)
    _job(s, 2, 2, depth_diff=-0.11, dropout_diff=0.01, mitigation=0.25)
    (s / "3" / ".hydra").mkdir(parents=True)  # a job that never finished: left out
    (s / "3" / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 3}))
    return s


def _t(values, bounds=None):
    v = np.asarray(values, dtype=float)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    return (max(lo, bounds[0]), min(hi, bounds[1])) if bounds else (lo, hi)


def test_aggregation_equals_hand_computation(sweep):
    res = C.aggregate(sweep)
    assert res["seeds"] == [0, 1, 2] and res["paper_eps_255"] == pytest.approx(0.85)
    nums = res["numbers"]
    r = nums[(nums.group == "attack") & (nums.name == "shallow") & (nums.eps_255 == 8.0)
             & (nums.metric == "label_changed_rate")].iloc[0]
    per_seed = [0.3 + 0.01 * s + 0.08 for s in range(3)]
    assert [r[f"seed_{s}"] for s in range(3)] == pytest.approx(per_seed)
    assert r["n_seeds"] == 3 and r["sd"] == pytest.approx(np.std(per_seed, ddof=1))
    assert r["mean"] == pytest.approx(np.mean(per_seed))
    assert (r["low"], r["high"]) == pytest.approx(_t(per_seed))
    t = nums[(nums.group == "train") & (nums.name == "vgg_small")].iloc[0]
    assert math.isnan(t["eps"]) and t["mean"] == pytest.approx(0.91)
    d = nums[(nums.group == "defense") & (nums.metric == "adaptive_pgd_post_acc") & (nums.eps_255 == 0.85)].iloc[0]
    assert d["name"] == "vgg_small" and (d["low"], d["high"]) == pytest.approx(_t([0, 0.1, 0.2], (0, 1)))
    f = nums[(nums.group == "fooling") & (nums.metric == "transfer_rate")].set_index("name")["mean"]
    assert f.to_dict() == pytest.approx({"shallow->vgg_small:cppn": 0.1, "shallow->vgg_small:direct": 0.6})
    a = nums[(nums.group == "activations")].set_index(["name", "eps_255"])["mean"]  # target model, category all
    assert len(a) == 2 * (1 + len(EPS_255)) and a[("12:fc6", 8.0)] == pytest.approx(12 * 8 / 100 + 0.001)
    assert res["target_model"] == "vgg_small"
    assert d["low"] == 0.0  # the t interval of a rate is cut at 0
    assert not (nums.metric.str.endswith("_low") | nums.metric.str.endswith("_high")).any()
    tr = nums[(nums.group == "transfer") & (nums.name == "shallow->vgg_small") & (nums.eps_255 == 8.0)]
    assert tr.set_index("metric")["mean"].to_dict() == pytest.approx({"fooling_rate": 0.18, "fooling_rate_gap": 0.21})
    p = nums[(nums.group == "paired") & (nums.name == "shallow-vs-vgg_small")].iloc[0]
    assert p["metric"] == "label_changed_rate_diff" and p["mean"] == pytest.approx(0.11)

    by = {(c["claim"], c["eps_255"]): c for c in res["claims"]}
    depth = by[("depth", 0.85)]
    assert depth["paper_eps"] and not by[("depth", 8.0)]["paper_eps"]
    hidden, shallow = depth["evidence"]
    assert hidden["per_seed"][0] == {"diff": -0.10, "low": pytest.approx(-0.15), "high": pytest.approx(-0.05), "n": 100}
    assert shallow["per_seed"][1] == {"diff": pytest.approx(-0.12), "low": pytest.approx(-0.16),
                                      "high": pytest.approx(-0.10), "n": 100}  # flipped from shallow-vs-vgg_small
    assert (hidden["low"], hidden["high"]) == pytest.approx(_t([-0.10, -0.12, -0.11]))
    assert hidden["verdict"] == shallow["verdict"] == depth["verdict"] == "supported"
    drop = by[("dropout", 0.85)]
    assert drop["evidence"][0]["mean"] == pytest.approx(0.02 / 3) and drop["verdict"] == "inconclusive"
    mit = by[("mitigation", 0.85)]
    assert mit["evidence"][0]["per_seed"][2] == {"rate": 0.25, "low": 0.15, "high": 0.35, "n": 12}
    assert mit["evidence"][0]["high"] < 0.8 and mit["verdict"] == "contradicted"
    table = C.verdict_table(res["claims"])
    assert tuple(table.columns) == C.VERDICT_COLUMNS and len(table) == 2 * (2 + 1 + 1)


def test_verdict_rule():
    assert C.judge(-0.2, -0.1, 5, "below", 0.0) == "supported"
    assert C.judge(0.1, 0.2, 5, "below", 0.0) == "contradicted"
    assert C.judge(-0.1, 0.1, 5, "below", 0.0) == "inconclusive"
    assert C.judge(0.1, 0.2, 5, "above", 0.0) == "supported"
    assert C.judge(0.8, 0.9, 5, "at_least", 0.8) == "supported"
    assert C.judge(0.7, 0.79, 5, "at_least", 0.8) == "contradicted"
    assert C.judge(0.7, 0.85, 5, "at_least", 0.8) == "inconclusive"
    assert C.judge(0.1, 0.2, 1, "above", 0.0) == "inconclusive"  # one seed is no evidence
    assert C.judge(math.nan, math.nan, 3, "above", 0.0) == "inconclusive"
    assert C.combine(["supported", "supported"]) == "supported"
    assert C.combine(["contradicted", "inconclusive"]) == "contradicted"
    assert C.combine(["supported", "contradicted"]) == "inconclusive"
    assert C.combine([]) == "inconclusive"
    with pytest.raises(ValueError, match="side"):
        C.judge(0, 1, 3, "sideways", 0)


def test_aggregation_refuses_bad_sweeps(tmp_path):
    s = tmp_path / "s"
    _job(s, 0, 0, -0.1, 0.0, 0.5)
    _job(s, 1, 0, -0.1, 0.0, 0.5)
    with pytest.raises(ValueError, match="share seeds"):
        C.aggregate(s)
    s2 = tmp_path / "s2"
    _job(s2, 0, 0, -0.1, 0.0, 0.5, models=["vgg_small", "shallow"])
    with pytest.raises(ValueError, match=r"not in model=.*hydra.callbacks.claims"):
        C.aggregate(s2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finished job"):
        C.aggregate(tmp_path / "empty")
    with pytest.raises(ValueError, match="more susceptible"):
        C.ClaimSpec(metric="adv_acc")  # higher accuracy is less susceptible: the sides would flip


def test_claims_callback_checks_models_up_front_and_writes_at_the_end(sweep):
    from omegaconf import OmegaConf

    from advprior.utils.multirun import ClaimsSummary

    cb = ClaimsSummary(shallower=OmegaConf.create(["shallow_hidden", "shallow"]))
    with pytest.raises(SystemExit, match=r"vgg_small_nodropout.*not in model"):  # Hydra would only warn on errors
        cb.on_multirun_start(OmegaConf.create({"model": {"vgg_small": {}, "shallow_hidden": {}, "shallow": {}}}))
    cb.on_multirun_start(OmegaConf.create({"model": {m: {} for m in MODELS}}))
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    saved = json.loads((sweep / "claims.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and saved["sweep_seconds"] >= 0 and saved["machine"]["cores"] >= 1
    assert pd.read_csv(sweep / "verdicts.csv")["verdict"].isin(["supported", "contradicted", "inconclusive"]).all()


BLOCK_NAMES = ("claims", "fgsm-rates", "defense", "fooling", "activations")
README_MARKERS = "".join(f"\n<!-- generated:{b} -->\nold\n<!-- /generated:{b} -->\n" for b in BLOCK_NAMES)
README_TEXT = "# A README\n\nSome text that stays as it is.\n"


def _fill(script, sweep_dir: Path, readme: Path) -> str:
    assert script.main([str(sweep_dir), "--readme", str(readme)]) == 0
    return readme.read_text()


def test_readme_script_fills_blocks_from_claims_json(sweep, tmp_path):
    res = C.aggregate(sweep)
    machine = {"cpu": "Test CPU", "cpu_capability": "AVX2", "cores": 2, "memory_gib": 8.0, "gpu": None,
               "python": "3.11", "versions": {"torch": "2.x"}}
    C.write(res, sweep, extra={"machine": machine, "sweep_seconds": 600.0})
    assert (sweep / "claims.csv").is_file() and (sweep / "verdicts.csv").is_file()
    saved = json.loads((sweep / "claims.json").read_text())  # strict JSON: NaN written as null
    assert saved["seeds"] == [0, 1, 2] and saved["machine"]["cpu"] == "Test CPU"
    script = _load_script()
    readme = tmp_path / "README.md"
    readme.write_text(README_TEXT)
    with pytest.raises(SystemExit, match="generated:claims"):  # no markers yet
        script.main([str(sweep), "--readme", str(readme)])
    original = readme.read_text()
    readme.write_text(original + README_MARKERS)
    text = _fill(script, sweep, readme)
    assert text.startswith(original) and "\nold\n" not in text
    claims_block = text.split("<!-- generated:claims -->")[1].split("<!-- /generated:claims -->")[0]
    assert "3 training seeds (0, 1, 2)" in claims_block and "Test CPU" in claims_block and "10 min" in claims_block
    lo, hi = _t([-0.10, -0.12, -0.11])
    assert f"-11.0 pp [{100 * lo:.1f}, {100 * hi:.1f}]" in claims_block
    assert "| Deeper nets are less susceptible to FGSM | **0.85** |" in claims_block
    assert "**contradicted**" in claims_block and "Verdict rule:" in claims_block
    rates = text.split("<!-- generated:fgsm-rates -->")[1].split("<!-- /generated:fgsm-rates -->")[0]
    lo, hi = _t([0.38, 0.39, 0.40])
    assert "| 8 | " in rates and f"39.0% [{100 * lo:.1f}, {100 * hi:.1f}]" in rates
    defense = text.split("<!-- generated:defense -->")[1]
    assert "mitigation" in defense and "adaptive PGD (posterior)" in defense and "20.0% [" in defense
    fooling = text.split("<!-- generated:fooling -->")[1].split("<!-- /generated:fooling -->")[0]
    lo, hi = _t([0.5, 0.6, 0.7])
    assert "| `shallow` -> `vgg_small` | direct | 89.0% [" in fooling
    assert f"60.0% [{100 * lo:.1f}, {100 * hi:.1f}]" in fooling
    acts = text.split("<!-- generated:activations -->")[1].split("<!-- /generated:activations -->")[0]
    rows = [line for line in acts.splitlines() if line.startswith("| conv1_1") or line.startswith("| fc6")]
    assert [r.split(" |")[0] for r in rows] == ["| conv1_1", "| fc6"]  # forward order, eps 0 left out
    assert "`vgg_small`" in acts and "| layer | **0.85** | 8 |" in acts
    assert _fill(script, sweep, readme) == text  # a second fill changes nothing
    with pytest.raises(SystemExit, match="claims.json"):
        script.main([str(tmp_path), "--readme", str(readme)])


# The real thing, small: two seeds of the claims experiment on debug=fast, then the README script.
SWEEP = ["experiment=claims", "debug=fast", "logger=[csv]", "callbacks=none", "seed=0,1", "data.eval_subset=24",
         "attack.epsilons=[0.85,16]", "attack.n_boot=200", "data.support_per_class=30", "prior.n_components=8",
         "prior.ae.epochs=2", "defense.adaptive.pgd.steps=1", "defense.panels=1"]


@pytest.mark.slow
def test_claims_multirun_two_seeds_end_to_end(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), ADVPRIOR_ROOT=str(tmp_path), HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "advprior", *SWEEP], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "claims" / "multiruns").iterdir()
    numbers = pd.read_csv(sweep / "claims.csv")
    saved = json.loads((sweep / "claims.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["sweep_seconds"] > 0 and saved["machine"]["cores"] >= 1
    jobs = {yaml.safe_load((d / ".hydra" / "config.yaml").read_text())["seed"]: d
            for d in sweep.iterdir() if (d / "metrics.json").is_file()}
    assert sorted(jobs) == [0, 1]
    # by hand from the jobs' own tables: every model's label-changed rate and every paired difference
    summaries = {s: pd.read_csv(d / "attack" / "summary.csv") for s, d in jobs.items()}
    for model in MODELS:
        for eps in (0.85, 16.0):
            vals = [summaries[s].loc[(summaries[s].model == model) & np.isclose(summaries[s].eps_255, eps),
                                     "label_changed_rate"].item() for s in (0, 1)]
            row = numbers[(numbers.group == "attack") & (numbers.name == model) & np.isclose(numbers.eps_255, eps)
                          & (numbers.metric == "label_changed_rate")].iloc[0]
            assert [row.seed_0, row.seed_1] == pytest.approx(vals)
            assert row["mean"] == pytest.approx(np.mean(vals))
            if vals[0] != vals[1]:
                assert (row.low, row.high) == pytest.approx(_t(vals, (0, 1)))
    paired = {s: pd.read_csv(d / "attack" / "paired.csv") for s, d in jobs.items()}
    for c in saved["claims"]:
        for e in c["evidence"]:
            if e["metric"] != "label_changed_rate_diff":
                continue
            for s in (0, 1):
                p = paired[s]
                hit = p[(p.model_a == e["model_a"]) & (p.model_b == e["model_b"]) & np.isclose(p.eps_255, c["eps_255"])
                        & (p.metric == "label_changed_rate")]
                assert e["per_seed"][str(s)]["diff"] == pytest.approx(hit["diff"].item())
            diffs = [e["per_seed"][str(s)]["diff"] for s in (0, 1)]
            assert e["mean"] == pytest.approx(np.mean(diffs))
            assert e["verdict"] == C.judge(*(math.nan if v is None else v for v in (e["low"], e["high"])),
                                           e["n_seeds"], e["side"], 0.0)
    defense = pd.read_csv(jobs[0] / "defense" / "summary.csv")
    row = numbers[(numbers.group == "defense") & (numbers.metric == "base_clean_acc")].iloc[0]
    assert row.seed_0 == pytest.approx(defense["base_clean_acc"].iloc[0])
    readme = tmp_path / "README.md"
    readme.write_text(README_TEXT + README_MARKERS)
    text = _fill(_load_script(), sweep, readme)
    assert "2 training seeds (0, 1)" in text and "`vgg_small_nodropout`" in text
