"""What the tiny run's offline W&B run holds, read by wandb's own reader (``wandb leet inspect``) and from the
files wandb writes under the run's ``files/``: the dashboard's axes, the per-eps series equal to the stored
tables, one-off results in the summary, the headline table and the report as an artifact."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from advprior.report.headlines import Headline, headline_rows
from advprior.utils.wandb_offline import read_offline_run
from tiny_run import tiny_run


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    r = tiny_run(tmp_path_factory)
    runs = list((r.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((r.run_dir / "wandb").iterdir())
    return r, runs[0], read_offline_run(runs[0])


def test_axes_are_declared(logged):
    _, _, w = logged
    by_name = {m.get("name") or m.get("glob_name"): m for m in w["metrics"]}
    for axis in ("epoch", "eps_255", "trainer/global_step"):
        assert by_name[axis]["options"].get("hidden") is True
    for pattern in ("train/*", "val/*", "val_attack/*", "test/*", "prior/*"):
        assert "glob_name" in by_name[pattern] and by_name[pattern]["step_metric"] == "epoch"
    for key in ("attack/shallow/label_changed_rate", "attack/shallow_hidden/high_conf_rate", "defense/mitigation_rate",
                "defense/adaptive_pgd_post_acc"):
        assert by_name[key]["step_metric"] == "eps_255"


def test_per_eps_series_equal_the_stored_tables(logged):
    r, _, w = logged
    rows = [h for h in w["history"] if "eps_255" in h]
    assert [h["eps_255"] for h in rows] == pytest.approx([0.85, 8.0])
    summary = pd.read_csv(r.run_dir / "attack" / "summary.csv")
    for _, s in summary.iterrows():
        row = next(h for h in rows if math.isclose(h["eps_255"], s["eps_255"]))
        for m in ("adv_acc", "label_changed_rate", "high_conf_rate", "fooling_rate"):
            assert row[f"attack/{s['model']}/{m}"] == pytest.approx(s[m])
    defense = pd.read_csv(r.run_dir / "defense" / "summary.csv")
    for _, s in defense.iterrows():
        row = next(h for h in rows if math.isclose(h["eps_255"], s["eps_255"]))
        assert row["defense/post_adv_acc"] == pytest.approx(s["post_adv_acc"])
        assert ("defense/mitigation_rate" in row) == (not math.isnan(s["mitigation_rate"]))


def test_one_off_results_are_in_the_summary_not_in_charts(logged):
    r, _, w = logged
    saved = json.loads((r.run_dir / "metrics.json").read_text())
    stage_results = {k: v for k, v in saved.items() if k.startswith(("attack/", "defense/", "prior/", "train/"))
                     and isinstance(v, (int, float)) and math.isfinite(v)}
    assert len(stage_results) > 50
    for k, v in stage_results.items():
        assert w["summary"][k] == pytest.approx(v), k
    assert not [k for h in w["history"] for k in h if k.startswith(("attack/", "defense/")) and "/eps=" in k]
    # series logged by Lightning stay in the history, against the epoch
    assert any("train/shallow/loss_epoch" in h and "epoch" in h for h in w["history"])


def test_headlines_table_and_report_artifact(logged):
    r, run_path, w = logged
    rows = headline_rows(r.run_dir)
    for h in rows:
        if math.isfinite(h.value):
            assert w["summary"][f"headline/{h.key}"] == pytest.approx(h.value)
    report = [a for a in w["artifacts"] if a["type"] == "report"]
    assert len(report) == 1 and report[0]["files"] == ["report.html"] and report[0]["name"].startswith("report-")
    tables = [f for f in w["files"] if f.startswith("media/table/report/headlines")]
    assert len(tables) == 1
    table = json.loads((run_path / "files" / tables[0]).read_text())
    assert table["columns"] == list(Headline.__dataclass_fields__) and len(table["data"]) == len(rows)
    assert w["state"] == "finished" and w["exit_code"] == 0 and w["group"] in (None, "")
    assert w["config"]["seed"] == 0 and "sweep" not in w["config"]


def test_nothing_leaves_the_run_directory(logged):
    r, _, _ = logged
    leaked = [p for p in r.home.rglob("*") if "wandb" in str(p.relative_to(r.home)).lower()]
    assert not leaked, leaked
