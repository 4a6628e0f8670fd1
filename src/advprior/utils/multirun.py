"""A Hydra callback that writes one summary table for a multirun sweep (one row per job)."""
from __future__ import annotations

import json
import logging
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
