"""The sweep report: ``report.html`` in a multirun sweep directory, built from its jobs' stored results.

One row per job (its swept parameters, then its headline values with intervals, and a link to the job's own
report), and for each swept parameter one figure: every headline value that changes across the jobs, against
that parameter (a line per setting of the other swept parameters), with its 95% interval.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..utils.io import atomic_write
from ..utils.multirun import override_dict
from .figures import _new_figure, save_figure
from .headlines import Headline, format_value, headline_rows
from .html import REPORT_FILE, Figure, environment, png_data_uri
from .rundata import RunData, is_number
from .tables import Table

log = logging.getLogger(__name__)

FIGURE_PREFIX = "sweep_"
MAX_PANELS = 12  # headline values per parameter figure (those that change most across the jobs)


@dataclass
class Job:
    name: str
    dir: Path
    overrides: dict[str, str]
    headlines: dict[str, Headline]


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Job directories (holding a metrics.json) in job-number order."""
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / "metrics.json").is_file()),
                  key=lambda p: (len(p.name), p.name))


def is_sweep_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "multirun.yaml").is_file() or (not (path / "metrics.json").is_file() and bool(job_dirs(path)))


def job_overrides(job_dir: Path) -> dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return override_dict(yaml.safe_load(path.read_text()) or []) if path.is_file() else {}


def load_jobs(sweep_dir: Path) -> list[Job]:
    return [Job(d.name, d, job_overrides(d), {h.key: h for h in headline_rows(d)}) for d in job_dirs(sweep_dir)]


def swept_keys(jobs: list[Job]) -> list[str]:
    """The overrides whose value differs between jobs (all of them for a single job)."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    if len(jobs) < 2:
        return keys
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def _as_float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def varying_headlines(jobs: list[Job]) -> list[str]:
    """Headline keys with a number in at least two jobs that is not the same in all of them, ordered by
    their spread (largest first)."""
    spread = {}
    for key in dict.fromkeys(k for j in jobs for k in j.headlines):
        vals = [j.headlines[key].value for j in jobs if key in j.headlines and is_number(j.headlines[key].value)]
        if len(vals) >= 2 and max(vals) - min(vals) > 1e-12:
            spread[key] = (max(vals) - min(vals)) / (abs(np.mean(vals)) + 1e-12)
    return sorted(spread, key=lambda k: -spread[k])


def parameter_figure(jobs: list[Job], param: str, keys: list[str], others: list[str]):
    """One panel per headline key: its value (with the 95% interval) against ``param``, one line per setting
    of the ``others`` swept parameters; a numeric parameter on a numeric axis, any other in the jobs' order."""
    xs_raw = [j.overrides.get(param) for j in jobs]
    numeric = all(_as_float(x) is not None for x in xs_raw)
    labels = list(dict.fromkeys(str(x) for x in xs_raw))
    n = len(keys)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _new_figure((4.6 * cols, 3.2 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.axis("off")
    for ax, key in zip(axes, keys):
        lines: dict[str, list] = {}
        for j, x in zip(jobs, xs_raw):
            h = j.headlines.get(key)
            if h is None or not is_number(h.value):
                continue
            xv = _as_float(x) if numeric else labels.index(str(x))
            lo = h.low if h.low is not None else h.value
            hi = h.high if h.high is not None else h.value
            label = ", ".join(f"{q}={j.overrides.get(q)}" for q in others)
            lines.setdefault(label, []).append((xv, h.value, h.value - lo, hi - h.value))
        h0 = next(j.headlines[key] for j in jobs if key in j.headlines)
        scale = 100.0 if h0.unit in ("%", "pp") else 1.0
        for label, pts in lines.items():
            x, y, el, eh = map(np.array, zip(*sorted(pts)))
            # a point estimate can sit outside a percentile interval: no negative bar
            ax.errorbar(x, y * scale, yerr=[np.maximum(el, 0) * scale, np.maximum(eh, 0) * scale], marker="o",
                        capsize=3, label=label or None)
        if others and lines:
            ax.legend(fontsize=7)
        ax.set_title(h0.quantity, fontsize=8, wrap=True)
        ax.set_xlabel(param)
        ax.set_ylabel({"%": "%", "pp": "percentage points"}.get(h0.unit, "value"))
        xs = [_as_float(x) for x in xs_raw] if numeric else []
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        elif min(xs) > 0 and max(xs) / min(xs) >= 10:  # a geometric grid (1, 4, 16...) reads best on a log axis
            ax.set_xscale("log")
    fig.suptitle(f"headline values against {param} (95% intervals)")
    return fig


def sweep_table(jobs: list[Job], params: list[str], keys: list[str]) -> Table:
    headers = ["job", *params, *[next(j.headlines[k] for j in jobs if k in j.headlines).quantity for k in keys]]
    rows = []
    for j in jobs:
        cells = [j.name, *[j.overrides.get(p, "") for p in params]]
        for k in keys:
            h = j.headlines.get(k)
            cells.append(format_value(h.value, h.low, h.high, h.unit) if h else "–")
        rows.append(cells)
    return Table("One row per job", headers, rows, "Values with 95% intervals; the job's own report has the rest.",
                 [False] * (1 + len(params)) + [True] * len(keys))


def build_sweep_report(sweep_dir: str | Path) -> Path:
    """Write ``sweep_dir/report.html`` (and ``sweep_dir/figures/sweep_<param>.png``); returns its path."""
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"no finished job (a subdirectory with metrics.json) in {sweep_dir}")
    params = swept_keys(jobs)
    varying = varying_headlines(jobs)
    figures = []
    for p in params:
        if varying:
            path = save_figure(parameter_figure(jobs, p, varying[:MAX_PANELS], [q for q in params if q != p]),
                               sweep_dir / "figures" / f"{FIGURE_PREFIX}{p.replace('/', '_')}.png")
            figures.append(Figure(f"against {p}", png_data_uri(path)))
    # Every headline key in the table: those that change first, then the rest.
    keys = varying + [k for k in dict.fromkeys(k for j in jobs for k in j.headlines) if k not in varying]
    html = environment().get_template("sweep.html.j2").render(
        title=f"advprior sweep report: {RunData(jobs[0].dir).config.get('task_name', 'run')}", sweep_name=sweep_dir.name,
        params=params, table=sweep_table(jobs, params, keys), figures=figures,
        jobs=[(j.name, f"{j.name}/{REPORT_FILE}" if (j.dir / REPORT_FILE).is_file() else None) for j in jobs],
        n_varying=len(varying))
    return atomic_write(sweep_dir / REPORT_FILE, lambda p: p.write_text(html, encoding="utf-8"))
