"""The sweep report: one row per job and plots against each swept parameter, from synthetic jobs and from a
real 2-job multirun (with one W&B group and the swept parameter in each job's config)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pandas as pd
import yaml
from omegaconf import OmegaConf

from advprior.report.cli import main as report_main
from advprior.report.html import REPORT_FILE
from advprior.report.sweep import build_sweep_report, is_sweep_dir
from advprior.utils.multirun import swept_parameters
from advprior.utils.wandb_offline import read_offline_run
from conftest import ROOT
from report_fixture import make_run
from test_report import assert_offline, parse


def make_sweep(tmp_path, weights=(1, 4, 16)):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": ["debug=fast", "prior.weight=1,4,16"]}}}),
                   sweep / "multirun.yaml")
    for i, w in enumerate(weights):
        job = make_run(tmp_path / f"tmp{i}", ["train", "attack", "defense"])
        job = job.rename(sweep / str(i))
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["debug=fast", f"prior.weight={w}"]))
        d = pd.read_csv(job / "defense" / "summary.csv")
        d["mitigation_rate"] = 0.2 * (i + 1)   # changes with the weight
        d["mitigation_rate_low"], d["mitigation_rate_high"] = d["mitigation_rate"] - 0.1, d["mitigation_rate"] + 0.1
        d.to_csv(job / "defense" / "summary.csv", index=False)
    return sweep


def test_sweep_report_has_a_row_per_job_and_plots_what_changes(tmp_path):
    sweep = make_sweep(tmp_path)
    assert is_sweep_dir(sweep) and not is_sweep_dir(sweep / "0")
    html = build_sweep_report(sweep).read_text()
    assert_offline(html)
    links = parse(html)
    # one figure, for the one swept parameter (debug=fast is the same in every job); job reports linked
    assert (sweep / "figures" / "sweep_prior.weight.png").is_file() and len(links.images) == 1
    assert [u for u in links.urls if u.endswith(REPORT_FILE)] == []  # the jobs have no report.html yet
    table = html[html.index('<section id="jobs">'):html.index("</section>")]
    rows = re.findall(r"<tr><td>(\d)</td><td>(\d+)</td>", table)
    assert rows == [("0", "1"), ("1", "4"), ("2", "16")]
    assert "<th>prior.weight</th>" in table and "<th>debug</th>" not in table
    assert "mitigation rate, eps 0.85/255" in table and "60.0% [50.0, 70.0]" in table
    assert "headline value(s) that change" in html
    for j in ("0", "1", "2"):
        assert report_main([str(sweep / j), "--quiet"]) == 0
    assert report_main([str(sweep), "--quiet"]) == 0  # advprior-report on the sweep directory
    assert [u for u in parse((sweep / REPORT_FILE).read_text()).urls if u.endswith(REPORT_FILE)] == [
        "0/report.html", "1/report.html", "2/report.html"]


def test_swept_parameters_come_from_the_sweep_overrides(tmp_path):
    sweep = make_sweep(tmp_path)
    hc = OmegaConf.create({"overrides": {"task": ["debug=fast", "prior.weight=4"]}, "sweep": {"dir": str(sweep)}})
    assert swept_parameters(hc) == {"prior.weight": "4"}
    (sweep / "multirun.yaml").unlink()   # without the sweep's record every override counts
    assert swept_parameters(hc) == {"debug": "fast", "prior.weight": "4"}


def test_a_two_job_multirun_writes_the_sweep_report(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "ADVPRIOR_"))}
    env.update(PYTHONPATH=str(ROOT / "src"), HOME=str(tmp_path / "home"), ADVPRIOR_ROOT=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "advprior", "-m", "debug=fast", "stages=[train]", "model=[shallow]",
                           "seed=0,1"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = list((tmp_path / "logs" / "run" / "multiruns").iterdir())
    html = (sweep / REPORT_FILE).read_text()
    assert_offline(html)
    table = html[html.index('<section id="jobs">'):html.index("</section>")]
    assert re.findall(r"<tr><td>(\d)</td><td>(\d)</td>", table) == [("0", "0"), ("1", "1")]
    assert "<th>seed</th>" in table and "test accuracy, shallow" in table
    assert [u for u in parse(html).urls if u.endswith(REPORT_FILE)] == ["0/report.html", "1/report.html"]
    # both jobs in one W&B group, each with its swept value as a config key
    runs = [read_offline_run(next((sweep / j / "wandb").glob("offline-run-*"))) for j in ("0", "1")]
    assert runs[0]["group"] == runs[1]["group"] == f"run-{sweep.name}"
    assert [r["config"]["sweep"] for r in runs] == [{"seed": "0"}, {"seed": "1"}]


def test_two_swept_parameters_give_a_figure_each_with_a_line_per_setting_of_the_other(tmp_path):
    sweep = make_sweep(tmp_path, weights=(1, 4, 1, 4))
    for i, job in enumerate(sorted(p for p in sweep.iterdir() if p.is_dir())):
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"prior.weight={(1, 4, 1, 4)[i]}",
                                                                       f"prior.bandwidth={('scott', 'scott', 0.5, 0.5)[i]}"]))
    build_sweep_report(sweep)
    assert {p.name for p in (sweep / "figures").iterdir()} == {"sweep_prior.weight.png", "sweep_prior.bandwidth.png"}
    from advprior.report.sweep import load_jobs, parameter_figure, swept_keys, varying_headlines

    jobs = load_jobs(sweep)
    assert swept_keys(jobs) == ["prior.weight", "prior.bandwidth"]
    fig = parameter_figure(jobs, "prior.weight", varying_headlines(jobs)[:1], ["prior.bandwidth"])
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["prior.bandwidth=0.5", "prior.bandwidth=scott"]
    assert [len(c.lines[0].get_xdata()) for c in ax.containers] == [2, 2]   # one errorbar line per bandwidth
