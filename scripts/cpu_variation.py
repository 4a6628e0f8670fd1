"""How much results move across CPU instruction sets: the same run under this CPU's default kernels and under
AVX2 kernels, side by side.

Runs ``python -m advprior`` twice with the same seed and config, each in its own empty store: once as is and
once with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`` (what an AVX2-only
CPU runs). Then it compares the two runs' ``attack/summary.csv`` (label-changed and high-confidence rates
per model and eps) and ``defense/summary.csv`` (posterior clean accuracy, mitigation rate, detector AUC),
each value with its 95% interval, and writes a Markdown table (with the machine). On a CPU without AVX-512
both runs use AVX2 code and must agree exactly; the table says which kernels the first run used.
Examples::

    python scripts/cpu_variation.py                         # the embedded default's train, attack, prior, defense
    python scripts/cpu_variation.py --readme README.md      # also replace the README's block 'cpu-variation'
    python scripts/cpu_variation.py --quick                 # debug=fast, two eps: a check that it runs
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from advprior.utils.machine import machine_info, machine_line  # noqa: E402
from advprior.utils.readme import update_file  # noqa: E402

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# train and prior run as their inputs; the adaptive attacks (most of the defense's time) are left out: the
# non-adaptive columns compared here do not depend on them
RUN = ["stages=[attack,defense]", "logger=[csv]", "defense.adaptive.fgsm=false", "defense.adaptive.pgd.steps=0"]
QUICK = ["debug=fast", "attack.epsilons=[0.85,8]", "attack.figure_eps=0.85"]
ATTACK_METRICS = (("label_changed_rate", "label changed"), ("high_conf_rate", "high-confidence"))
DEFENSE_METRICS = (("post_clean_acc", "posterior clean accuracy"), ("mitigation_rate", "mitigation"),
                   ("detector_auc", "detector AUC"))


def capability(env: dict[str, str]) -> str:
    """The kernel set torch picks in a process with ``env`` (``torch.backends.cpu.get_cpu_capability``)."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def run(root: Path, env: dict[str, str], overrides: list[str]) -> Path:
    """One pipeline run in its own store under ``root``; its run directory."""
    root.mkdir(parents=True, exist_ok=True)
    env = {**env, "ADVPRIOR_ROOT": str(root), "PYTHONPATH": str(ROOT / "src"), "HOME": str(root)}
    proc = subprocess.run([sys.executable, "-m", "advprior", *overrides], env=env, cwd=root, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"advprior {' '.join(overrides)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    runs = sorted((root / "logs").glob("*/runs/*/metrics.json"))
    if not runs:
        raise SystemExit(f"no run directory with metrics.json under {root / 'logs'}")
    return runs[-1].parent


def _cell(r: pd.Series, metric: str) -> str:
    v, lo, hi = r.get(metric), r.get(f"{metric}_low"), r.get(f"{metric}_high")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if metric == "detector_auc":
        return f"{v:.2f}"
    text = f"{100 * v:.1f}%"
    return text if lo is None or (isinstance(lo, float) and math.isnan(lo)) else f"{text} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _diff(a: float, b: float, metric: str) -> str:
    if any(isinstance(x, float) and math.isnan(x) for x in (a, b)):
        return "n/a"
    return f"{b - a:+.2f}" if metric == "detector_auc" else f"{100 * (b - a):+.1f} pp"


def compare(first: Path, second: Path) -> list[dict]:
    """One row per (quantity, eps): both runs' values with their intervals and the difference."""
    rows = []
    a, b = (pd.read_csv(d / "attack" / "summary.csv") for d in (first, second))
    for (model, eps), ra in a.set_index(["model", "eps_255"]).iterrows():
        rb = b.set_index(["model", "eps_255"]).loc[(model, eps)]
        for metric, name in ATTACK_METRICS:
            rows.append({"quantity": f"`{model}` {name}", "eps_255": eps, "first": _cell(ra, metric),
                         "second": _cell(rb, metric), "difference": _diff(ra[metric], rb[metric], metric)})
    a, b = (pd.read_csv(d / "defense" / "summary.csv") for d in (first, second))
    for (_, ra), (_, rb) in zip(a.iterrows(), b.iterrows()):
        for metric, name in DEFENSE_METRICS:
            rows.append({"quantity": f"defense: {name}", "eps_255": ra["eps_255"], "first": _cell(ra, metric),
                         "second": _cell(rb, metric), "difference": _diff(ra[metric], rb[metric], metric)})
    return rows


def table(rows: list[dict], caps: tuple[str, str], overrides: list[str], info: dict) -> str:
    lines = [f"Generated by `scripts/cpu_variation.py` (`advprior {' '.join(overrides)}`, the same seed in two "
             f"empty stores; torch kernels {caps[0]} vs {caps[1]}). Machine: {machine_line(info)}.\n",
             f"| quantity | eps (x255) | {caps[0]} | {caps[1]} | difference |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["quantity"], r["eps_255"])):
        lines.append(f"| {r['quantity']} | {r['eps_255']:g} | {r['first']} | {r['second']} | {r['difference']} |")
    if caps[0] == caps[1]:
        lines += ["", f"This CPU runs {caps[0]} kernels by default: both runs are the same code and must agree."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="debug=fast and two eps: a check that it runs")
    ap.add_argument("--readme", type=Path, default=None, help="replace this file's generated block 'cpu-variation'")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows, settings and machine here")
    ap.add_argument("--keep", type=Path, default=None, help="run in this directory (kept) instead of a temporary one")
    ap.add_argument("overrides", nargs="*", help="more advprior overrides for both runs")
    args = ap.parse_args(argv)
    overrides = RUN + (QUICK if args.quick else []) + args.overrides
    base_env = {k: v for k, v in os.environ.items() if k not in AVX2}
    avx2_env = {**base_env, **AVX2}
    caps = (capability(base_env), capability(avx2_env))
    with tempfile.TemporaryDirectory(prefix="cpu_variation_") as tmp:
        where = args.keep or Path(tmp)
        first, second = run(where / "default", base_env, overrides), run(where / "avx2", avx2_env, overrides)
        rows = compare(first, second)
    info = machine_info()
    md = table(rows, caps, overrides, info)
    sys.stdout.write(md)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "capabilities": caps, "overrides": overrides,
                                         "quick": args.quick, "rows": rows}, indent=2) + "\n")
    if args.readme is not None:
        if args.quick:
            raise SystemExit("--quick numbers are not for the README: run without --quick")
        print(f"{args.readme}: {'updated' if update_file(args.readme, {'cpu-variation': md}) else 'unchanged'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
