"""scripts/bench_all.py on two tiny fake benchmark scripts (and one that fails) in a temporary directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from advprior.utils.readme import read_block
from conftest import ROOT

FAKE = """
import argparse
from advprior.utils.bench import BenchRow, write_results
ap = argparse.ArgumentParser()
ap.add_argument("--json")
ap.add_argument("--quick", action="store_true")
a = ap.parse_args()
print("measuring", "quick" if a.quick else "full")
write_results(a.json, "{name}", [BenchRow("{name} vs loop", {value}, "x", ">= 3x", {value} >= 3, "medians of 3"),
                                 BenchRow("{name} overhead", 1.5, "%", "<= 5%", True)], settings={{"quick": a.quick}})
"""


def run_bench_all(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_all.py"), "--scripts-dir",
                           str(tmp_path / "scripts"), "--out-dir", str(tmp_path / "bench"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_bench_all_collects_every_script_into_one_table(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "bench_alpha.py").write_text(FAKE.format(name="alpha", value=3.5))
    (scripts / "bench_beta.py").write_text(FAKE.format(name="beta", value=2.0))
    (scripts / "bench_all.py").write_text("raise SystemExit('bench_all must not run itself')")
    (scripts / "helper.py").write_text("raise SystemExit('not a benchmark')")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- generated:benchmarks -->\nold\n<!-- /generated:benchmarks -->\ntail\n")
    proc = run_bench_all(tmp_path, "--quick", "--readme", str(readme))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = tmp_path / "bench"
    md = (out / "results.md").read_text()
    assert "| `bench_alpha.py` | alpha vs loop | 3.50x | >= 3x | yes | medians of 3 |" in md
    assert "| `bench_beta.py` | beta vs loop | 2.00x | >= 3x | **no** |" in md
    assert md.count("overhead | 1.5% | <= 5% | yes") == 2 and "--quick" in md.splitlines()[0]
    data = json.loads((out / "results.json").read_text())
    assert data["quick"] is True and data["machine"]["cores"] >= 1
    assert [s["script"] for s in data["scripts"]] == ["alpha", "beta"]   # the name each script wrote
    assert all(s["settings"] == {"quick": True} and s["error"] is None for s in data["scripts"])
    assert (out / "results" / "alpha.log").read_text().count("measuring quick") == 1
    assert read_block(readme.read_text(), "benchmarks") == md and readme.read_text().endswith("tail\n")


def test_a_failing_script_is_reported_and_the_rest_still_run(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "bench_good.py").write_text(FAKE.format(name="good", value=4.0))
    (scripts / "bench_bad.py").write_text(textwrap.dedent("""
        import sys
        print("boom", file=sys.stderr)
        sys.exit(3)
    """))
    # a stale result of the failing script must not be reported as this run's
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "bad.json").write_text('{"rows": []}')
    proc = run_bench_all(tmp_path)
    assert proc.returncode == 1
    md = (tmp_path / "bench" / "results.md").read_text()
    assert "| `bench_bad.py` | **failed** |" in md and "exit status 3: boom" in md
    assert "good vs loop | 4.00x" in md
    assert not (tmp_path / "bench" / "results" / "bad.json").exists()


def test_only_names_unknown_scripts(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "bench_alpha.py").write_text(FAKE.format(name="alpha", value=3.5))
    proc = run_bench_all(tmp_path, "--only", "nope")
    assert proc.returncode == 2 and "no such scripts" in proc.stderr and "alpha" in proc.stderr


def test_args_reach_only_their_script(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    fake = FAKE.replace('ap.add_argument("--quick", action="store_true")',
                        'ap.add_argument("--quick", action="store_true")\nap.add_argument("--steps", type=int, default=0)')
    fake = fake.replace('settings={{"quick": a.quick}}', 'settings={{"quick": a.quick, "steps": a.steps}}')
    (scripts / "bench_alpha.py").write_text(fake.format(name="alpha", value=3.5))
    (scripts / "bench_beta.py").write_text(fake.format(name="beta", value=3.5))
    proc = run_bench_all(tmp_path, "--args", "alpha=--steps 7")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    data = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert {s["script"]: s["settings"]["steps"] for s in data["scripts"]} == {"alpha": 7, "beta": 0}
    bad = run_bench_all(tmp_path, "--args", "gamma=--steps 1")
    assert bad.returncode == 2 and "--args 'gamma=--steps 1'" in bad.stderr
