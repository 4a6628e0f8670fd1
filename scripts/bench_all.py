#!/usr/bin/env python
"""Run every ``scripts/bench_*.py`` and collect their results into one table (``make bench``).

Each script runs as ``python scripts/bench_<name>.py --json benchmarks/results/<name>.json [--quick]`` (its
console output goes to ``benchmarks/results/<name>.log``) and writes its rows with
``advprior.utils.bench.write_results``. This script then writes ``benchmarks/results.md`` (one Markdown
table: script, comparison, measured value, target, whether it holds, detail) and ``benchmarks/results.json``
(the same rows, each script's settings and the machine), and with ``--readme README.md`` replaces the README's
generated block ``benchmarks`` with the Markdown table. A failing script is reported and the others still
run; the exit status is 1 if any failed.

    python scripts/bench_all.py                 # full benchmarks (minutes)
    python scripts/bench_all.py --quick         # tiny settings: checks that every script runs
    python scripts/bench_all.py --readme README.md
"""
from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from advprior.utils.bench import read_results
from advprior.utils.io import atomic_write, save_json
from advprior.utils.machine import machine_info, machine_line
from advprior.utils.readme import update_file

ROOT = Path(__file__).resolve().parents[1]


def bench_scripts(scripts_dir: Path) -> list[Path]:
    """Every ``bench_*.py`` of ``scripts_dir`` except this one, by name."""
    return sorted(p for p in scripts_dir.glob("bench_*.py") if p.name != Path(__file__).name)


def run_script(script: Path, out_dir: Path, quick: bool, timeout: float | None, extra: Sequence[str] = ()) -> dict:
    """Run one script (with ``extra`` arguments); returns ``{"script", "rc", "seconds", "results" (None on
    failure), "error"}``."""
    name = script.stem[len("bench_"):]
    json_path, log_path = out_dir / f"{name}.json", out_dir / f"{name}.log"
    json_path.unlink(missing_ok=True)  # a failed run must not leave last time's numbers behind
    cmd = [sys.executable, str(script), "--json", str(json_path), *(["--quick"] if quick else []), *extra]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = -1, e.stdout or "", f"timed out after {timeout} s"
        out = out.decode() if isinstance(out, bytes) else out
    seconds = time.perf_counter() - t0
    atomic_write(log_path, lambda p: p.write_text(f"$ {' '.join(cmd)}\n{out}\n--- stderr\n{err}"))
    error = None
    if rc != 0:
        error = f"exit status {rc}: {err.strip().splitlines()[-1] if err.strip() else 'no message'} (see {log_path})"
    elif not json_path.is_file():
        error = f"wrote no {json_path} (does it accept --json PATH and call advprior.utils.bench.write_results?)"
    return {"script": script.name, "rc": rc, "seconds": round(seconds, 1), "error": error,
            "results": read_results(json_path) if error is None else None}


def fmt_value(value: float, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.1f}%"
    return f"{value:.3g} {unit}".strip()


def markdown(runs: list[dict], machine: dict, quick: bool) -> str:
    """One table of every row of every script (and a line per failed script)."""
    lines = [f"Machine: {machine_line(machine)}" + (" — `--quick` settings, not for quoting" if quick else ""), "",
             "| script | comparison | measured | target | holds | detail |", "|---|---|---|---|---|---|"]
    for r in runs:
        if r["results"] is None:
            lines.append(f"| `{r['script']}` | **failed** | | | | {r['error']} |")
            continue
        for row in r["results"]["rows"]:
            holds = {True: "yes", False: "**no**", None: ""}[row.get("holds")]
            detail = str(row.get("detail", "")).replace("|", "\\|")
            lines.append(f"| `{r['script']}` | {row['name']} | {fmt_value(row['value'], row['unit'])} | "
                         f"{row.get('target') or ''} | {holds} | {detail} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="pass --quick to every script (tiny settings)")
    ap.add_argument("--scripts-dir", type=Path, default=ROOT / "scripts")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks",
                    help="writes results.md, results.json and results/<name>.json|log here")
    ap.add_argument("--readme", type=Path, default=None,
                    help="also replace this file's generated block 'benchmarks' with the table")
    ap.add_argument("--only", nargs="*", default=None, help="run only these scripts (names without bench_ / .py)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per script (default: none)")
    ap.add_argument("--args", action="append", default=[], metavar="NAME=ARGS",
                    help="more arguments for one script, e.g. --args 'stages=--pgd-steps 1 --repeats 2'")
    args = ap.parse_args(argv)
    scripts = bench_scripts(args.scripts_dir)
    if args.only is not None:
        unknown = set(args.only) - {s.stem[len("bench_"):] for s in scripts}
        if unknown:
            ap.error(f"--only {sorted(unknown)}: no such scripts in {args.scripts_dir}; "
                     f"available: {[s.stem[len('bench_'):] for s in scripts]}")
        scripts = [s for s in scripts if s.stem[len("bench_"):] in args.only]
    if not scripts:
        ap.error(f"no bench_*.py in {args.scripts_dir}")
    extra: dict[str, list[str]] = {}
    for item in args.args:
        name, sep, rest = item.partition("=")
        if not sep or name not in {s.stem[len("bench_"):] for s in scripts}:
            ap.error(f"--args {item!r}: expected NAME=ARGS with NAME one of the scripts run")
        extra[name] = extra.get(name, []) + shlex.split(rest)
    results_dir = args.out_dir / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for s in scripts:
        print(f"{s.name} ...", flush=True)
        r = run_script(s, results_dir, args.quick, args.timeout, extra.get(s.stem[len("bench_"):], ()))
        print(f"{s.name}: {'ok' if r['error'] is None else 'FAILED: ' + r['error']} ({r['seconds']} s)", flush=True)
        runs.append(r)
    machine = machine_info()
    md = markdown(runs, machine, args.quick)
    atomic_write(args.out_dir / "results.md", lambda p: p.write_text(md))
    save_json({"machine": machine, "quick": args.quick,
               "scripts": [{k: r[k] for k in ("script", "rc", "seconds", "error")} | (r["results"] or {})
                           for r in runs]}, args.out_dir / "results.json")
    if args.readme is not None:
        changed = update_file(args.readme, {"benchmarks": md})
        print(f"{args.readme}: {'updated' if changed else 'unchanged'}")
    print()
    print(md)
    return 1 if any(r["error"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
