"""Hydra callbacks for multirun sweeps: one summary table across jobs, and the claims aggregation across seeds."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def collect_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job directory of ``sweep_dir``: its overrides as columns, then its metrics.json."""
    import pandas as pd  # here, not at import: Hydra builds this callback before the config is validated

    rows = []
    for job in sorted(Path(sweep_dir).iterdir(), key=lambda p: (len(p.name), p.name)):
        metrics_file = job / "metrics.json"
        if not job.is_dir() or not metrics_file.is_file():
            continue
        row: dict[str, Any] = {"job": job.name}
        overrides = job / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            for o in yaml.safe_load(overrides.read_text()) or []:
                key, _, value = str(o).partition("=")
                row[key.lstrip("+~")] = value
        row.update(json.loads(metrics_file.read_text()))
        rows.append(row)
    return pd.DataFrame(rows)


class MultirunSummary(Callback):
    """At the end of a multirun, write ``summary.csv`` in the sweep directory (jobs x metrics)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from .io import save_csv

        sweep_dir = Path(config.hydra.sweep.dir)
        df = collect_sweep(sweep_dir)
        if df.empty:
            log.warning("multirun summary: no finished jobs in %s", sweep_dir)
            return
        save_csv(df, sweep_dir / "summary.csv")
        log.info("multirun summary: %d jobs -> %s", len(df), sweep_dir / "summary.csv")


class ClaimsSummary(Callback):
    """The ``claims`` experiment's aggregation across training seeds (``advprior.analysis.claims``).

    At the start of the sweep: the models the claims compare must be configured, else the sweep stops before
    any job (with SystemExit: Hydra turns a callback's exceptions into warnings). At its end:
    ``claims.csv``, ``verdicts.csv`` and ``claims.json`` (with the machine and the sweep's wall time) in the
    sweep directory. Keyword arguments: the fields of ``ClaimSpec``.
    """

    def __init__(self, **spec: Any) -> None:
        from ..analysis.claims import ClaimSpec

        self.spec = ClaimSpec(**spec)
        self._start: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self.spec.check_models(list(config.model))
        except ValueError as e:
            log.error("claims: %s", e)
            raise SystemExit(f"claims: {e}") from None
        self._start = time.perf_counter()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from ..analysis import claims
        from .machine import machine_info

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            result = claims.aggregate(sweep_dir, self.spec)
        except Exception as e:  # Hydra would turn it into a warning: say what failed and how to redo it
            log.error("claims: the aggregation of %s failed (%s: %s); the jobs' results are kept: after a fix, "
                      "run `python -m advprior.analysis.claims %s`", sweep_dir, type(e).__name__, e, sweep_dir)
            raise
        seconds = None if self._start is None else round(time.perf_counter() - self._start, 1)
        claims.write(result, sweep_dir, extra={"machine": machine_info(), "sweep_seconds": seconds})
        for c in result["claims"]:
            if c["paper_eps"]:
                log.info("claims: %s -> %s", c["text"], c["verdict"])
        log.info("claims: %d seeds -> %s", len(result["seeds"]), sweep_dir / "claims.json")


# ----------------------------------------------------------------------------- sweep report

def override_dict(overrides: list[str]) -> dict[str, str]:
    """Hydra override strings (``a.b=1``, ``+c=x``, ``~d``) as ``{key: value}``."""
    out = {}
    for o in overrides:
        key, _, value = str(o).partition("=")
        out[key.lstrip("+~")] = value
    return out


def swept_parameters(hc: Any) -> dict[str, str]:
    """This job's values of the parameters its sweep varies (``HydraConfig.get()`` of a multirun job).

    The swept keys are the sweep overrides of the command line (``a=1,2``, ``choice(...)``, ``range(...)``),
    read from the sweep's ``multirun.yaml``, plus a sweeper's own ``params``; their values come from this
    job's overrides. Without ``multirun.yaml`` every override of the job counts."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    job = override_dict(list(hc.overrides.task))
    path = Path(hc.sweep.dir) / "multirun.yaml"
    if not path.is_file():
        return job
    sweep_cfg = OmegaConf.load(path)
    parsed = OverridesParser.create().parse_overrides(list(sweep_cfg.hydra.overrides.task))
    keys = {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()}
    keys |= set((OmegaConf.select(sweep_cfg, "hydra.sweeper.params") or {}).keys())
    return {k: v for k, v in job.items() if k in keys}


class SweepReport(Callback):
    """At the end of a multirun, write the sweep report ``report.html`` in the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from ..report.sweep import build_sweep_report

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            path = build_sweep_report(sweep_dir)
        except FileNotFoundError as e:
            log.warning("sweep report: %s", e)
            return
        log.info("sweep report: %s", path)
