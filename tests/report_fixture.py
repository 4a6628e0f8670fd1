"""A synthetic run directory with every table the report reads (numbers chosen so each verdict is known)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

EPS = [0.85, 8.0, 32.0]
STAGE_FILES = {
    "attack": ["attack/summary.csv", "attack/categories.csv", "attack/transfer.csv", "attack/paired.csv"],
    "defense": ["defense/summary.csv"],
    "fooling": ["fooling/summary.csv", "fooling/scores.csv"],
    "activations": ["activations/layer_change.csv", "activations/examples.csv"],
}


def _png(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 30, 3), color, dtype=np.uint8)).save(path)


def _ci(rec: dict, name: str, v: float, lo: float, hi: float) -> None:
    rec[name], rec[f"{name}_low"], rec[f"{name}_high"] = v, lo, hi


def attack_summary() -> pd.DataFrame:
    rows = []
    for model, base in (("deep", 0.02), ("shallow", 0.10), ("deep_nodrop", 0.03)):
        for e in EPS:
            r = {"model": model, "eps": e / 255, "eps_255": e, "n": 400, "n_clean_correct": 380, "n_high_conf": 8}
            k = 1 + e / 8
            _ci(r, "clean_acc", 0.95, 0.93, 0.97)
            _ci(r, "adv_acc", 0.95 - base * k, 0.9 - base * k, 0.97 - base * k)
            _ci(r, "label_changed_rate", base * k, base * k - 0.01, base * k + 0.01)
            _ci(r, "high_conf_rate", 0.02, 0.01, 0.03)
            _ci(r, "fooling_rate", base * k, base * k - 0.01, base * k + 0.01)
            _ci(r, "mean_second_prob_high_conf", 0.15, 0.12, 0.20)
            rows.append(r)
    return pd.DataFrame(rows)


def defense_summary() -> pd.DataFrame:
    rows = []
    for e in EPS:
        r = {"eps": e / 255, "eps_255": e, "n": 400}
        _ci(r, "base_clean_acc", 0.95, 0.93, 0.97)
        _ci(r, "post_clean_acc", 0.94, 0.92, 0.96)
        _ci(r, "base_adv_acc", 0.80, 0.76, 0.84)
        _ci(r, "post_adv_acc", 0.81, 0.77, 0.85)
        r["n_high_conf"] = 30
        _ci(r, "mitigation_rate", 0.75, 0.60, 0.88)   # the paper's 80% inside
        _ci(r, "recovery_rate", 0.40, 0.25, 0.55)
        _ci(r, "adaptive_fgsm_post_acc", 0.90, 0.87, 0.93)   # above base_adv_acc: "more robust"
        _ci(r, "adaptive_pgd_post_acc", 0.20, 0.16, 0.24)
        _ci(r, "pgd_base_acc", 0.21, 0.17, 0.25)     # overlaps: "no gain"
        r["n_detector_adv"] = 50
        _ci(r, "detector_auc", 0.85, 0.80, 0.90)
        rows.append(r)
    return pd.DataFrame(rows)


def make_run(root: Path, stages=("train", "attack", "prior", "defense", "fooling", "activations")) -> Path:
    """A run directory holding the files of ``stages`` only."""
    run = root / "2026-01-01_00-00-00"
    run.mkdir(parents=True)
    cfg = {"task_name": "synthetic", "seed": 0, "target_model": None,
           "data": {"_target_": "advprior.data.digits.DigitsDataModule"},
           "model": {"deep": {"_target_": "x.vgg", "dropout": 0.5}, "shallow": {"_target_": "x.shallow", "dropout": 0.0},
                     "deep_nodrop": {"_target_": "x.vgg", "dropout": 0.0}},
           "attack": {"figure_eps": 0.85, "scale": 255}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "machine.json").write_text(json.dumps({"cpu": "Test CPU", "cpu_capability": "AVX2", "cores": 2,
                                                  "memory_gib": 8.0, "gpu": None, "python": "3.11.0",
                                                  "platform": "Linux", "versions": {"torch": "2.0"}}))
    metrics = {f"time/{s}_seconds": 1.5 for s in stages}
    metrics["time/report_seconds"] = 0.3
    if "train" in stages:
        models = run / "models"
        models.mkdir()
        torch.save({"c1.weight": torch.zeros(2, 1, 3, 3), "c2.weight": torch.zeros(2, 2, 3, 3),
                    "bn.weight": torch.zeros(2), "fc.weight": torch.zeros(10, 2)}, models / "deep.pt")
        torch.save({"fc.weight": torch.zeros(10, 4)}, models / "shallow.pt")
        torch.save({"c1.weight": torch.zeros(2, 1, 3, 3), "c2.weight": torch.zeros(2, 2, 3, 3),
                    "fc.weight": torch.zeros(10, 2)}, models / "deep_nodrop.pt")
        metrics.update({"train/deep/test_acc": 0.95, "train/shallow/test_acc": 0.9, "train/deep/epochs": 6})
        _png(run / "figures" / "train_curves.png", (10, 200, 10))
    if "attack" in stages:
        (run / "attack").mkdir()
        s = attack_summary()
        s.to_csv(run / "attack/summary.csv", index=False)
        pd.DataFrame([{"eps": e / 255, "model": m, "true": 3, "refocused": 2, "conatural": 1, "benign": 0,
                       "wrong_to_wrong": 1, "unchanged": 393} for m in ("deep", "shallow") for e in EPS]
                     ).to_csv(run / "attack/categories.csv", index=False)
        t = []
        for e in EPS:
            for src, tgt in (("deep", "shallow"), ("shallow", "deep")):
                r = {"eps": e / 255, "source": src, "target": tgt, "n": 400, "n_correct": 380}
                _ci(r, "fooling_rate", 0.05, 0.03, 0.07)
                _ci(r, "adv_acc", 0.9, 0.87, 0.93)
                _ci(r, "mean_confidence", 0.8, 0.78, 0.82)
                r["mean_confidence_fooled"] = 0.6
                t.append(r)
        pd.DataFrame(t).to_csv(run / "attack/transfer.csv", index=False)
        # shallow listed first: the report must flip the sign to deep - shallow
        pd.DataFrame([{"model_a": "shallow", "model_b": "deep", "eps": 0.85 / 255, "eps_255": 0.85,
                       "metric": "label_changed_rate", "a": 0.11, "b": 0.022, "diff": 0.088, "diff_low": 0.06,
                       "diff_high": 0.11, "n": 400, "method": "paired bootstrap"}]
                     ).to_csv(run / "attack/paired.csv", index=False)
        _png(run / "figures" / "attack_rates_vs_eps.png", (200, 10, 10))
    if "prior" in stages:
        metrics.update({"prior/explained_variance_mean": 0.97, "prior/support_points": 1000})
        _png(run / "figures" / "prior_codes.png", (10, 10, 200))
    if "defense" in stages:
        (run / "defense").mkdir()
        defense_summary().to_csv(run / "defense/summary.csv", index=False)
        _png(run / "figures" / "defense_panels.png", (200, 200, 10))
    if "fooling" in stages:
        (run / "fooling").mkdir()
        f = []
        for src, tgt in (("deep", "deep"), ("deep", "shallow")):
            r = {"source": src, "target": tgt, "encoding": "cppn", "n": 20}
            _ci(r, "source_conf_mean", 0.97, 0.95, 0.99)
            _ci(r, "transfer_rate", 0.3, 0.1, 0.5)
            _ci(r, "target_conf_mean", 0.4, 0.3, 0.5)   # below the source's: "lower confidence (supported)"
            f.append(r)
        pd.DataFrame(f).to_csv(run / "fooling/summary.csv", index=False)
        pd.DataFrame({"image": range(60), "source": "deep", "target": "shallow", "conf": np.linspace(0, 1, 60)}
                     ).to_csv(run / "fooling/scores.csv", index=False)
        _png(run / "figures" / "fooling_elites.png", (10, 200, 200))
    if "activations" in stages:
        (run / "activations").mkdir()
        pd.DataFrame([{"model": "deep", "eps": 0.85 / 255, "category": "all", "layer": layer, "depth": d, "n": 50,
                       "rel_change_mean": m, "rel_change_low": m - 0.01, "rel_change_high": m + 0.01}
                      for layer, d, m in (("conv1_2", 1, 0.30), ("conv3_1", 2, 0.5), ("conv5_1", 3, 0.10))]
                     ).to_csv(run / "activations/layer_change.csv", index=False)
        pd.DataFrame({"index": [1, 2], "layer": ["conv1_2", "conv1_2"], "rel_change": [0.3, 0.2]}
                     ).to_csv(run / "activations/examples.csv", index=False)
        _png(run / "figures" / "activations_maps.png", (200, 10, 200))
    _png(run / "figures" / "custom_thing.png", (90, 90, 90))
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run
