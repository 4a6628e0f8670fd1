"""Read what the stages stored in a run directory (tables, metrics, config, machine), never recomputing.

Every reader returns None (or an empty dict) when its file is absent, so a report shows exactly the
stages that ran.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

CONFIG_FILE = "config.yaml"      # the resolved config, written by the cli at start
MACHINE_FILE = "machine.json"    # advprior.utils.machine.machine_info() of the machine that ran it


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class RunData:
    """Lazy, cached access to one run directory's stored results."""

    run_dir: Path
    _tables: dict[str, pd.DataFrame | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        if not self.run_dir.is_dir():
            raise FileNotFoundError(f"run directory {self.run_dir} does not exist: pass the directory of a run "
                                    "(logs/<task_name>/runs/<date>_<time>)")

    def table(self, rel: str) -> pd.DataFrame | None:
        """``run_dir/rel`` as a DataFrame (CSV or Parquet), or None when absent or empty."""
        if rel not in self._tables:
            path = self.run_dir / rel
            df = None
            if path.is_file() and path.stat().st_size:
                try:
                    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
                except pd.errors.EmptyDataError:  # a table written with no columns (nothing to report)
                    df = None
            self._tables[rel] = df if df is not None and len(df) else None
        return self._tables[rel]

    @cached_property
    def metrics(self) -> dict[str, Any]:
        path = self.run_dir / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @cached_property
    def config(self) -> dict[str, Any]:
        """The resolved config (``config.yaml``), else Hydra's unresolved ``.hydra/config.yaml``, else {}."""
        for rel in (CONFIG_FILE, ".hydra/config.yaml"):
            path = self.run_dir / rel
            if path.is_file():
                return yaml.safe_load(path.read_text()) or {}
        return {}

    @cached_property
    def machine(self) -> dict[str, Any] | None:
        path = self.run_dir / MACHINE_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    @cached_property
    def models(self) -> list[str]:
        """The configured models in config order (else the order of ``attack/summary.csv``)."""
        models = list((self.config.get("model") or {}).keys())
        if not models and self.table("attack/summary.csv") is not None:
            models = list(dict.fromkeys(self.table("attack/summary.csv")["model"]))
        return models

    @cached_property
    def target_model(self) -> str | None:
        return self.config.get("target_model") or (self.models[0] if self.models else None)

    @cached_property
    def paper_eps_255(self) -> float:
        """The paper's eps (``attack.figure_eps``) on the 0-255 scale (0.85 when no config is stored)."""
        attack = self.config.get("attack") or {}
        try:
            return float(attack.get("figure_eps", 0.85)) * 255.0 / float(attack.get("scale", 255))
        except (TypeError, ValueError):  # an unresolved interpolation in .hydra/config.yaml
            return 0.85

    def figures(self, stage: str) -> list[Path]:
        """``figures/<stage>_*.png`` sorted by name."""
        return sorted((self.run_dir / "figures").glob(f"{stage}_*.png"))

    def model_depth(self, name: str) -> int | None:
        """Weight layers (conv + linear: weight tensors with >= 2 dims) of ``models/<name>.pt``, if stored."""
        path = self.run_dir / "models" / f"{name}.pt"
        if not path.is_file():
            return None
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        return sum(1 for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) >= 2)

    def model_config(self, name: str) -> dict[str, Any]:
        return dict((self.config.get("model") or {}).get(name) or {})

    def stage_seconds(self) -> dict[str, float]:
        """``time/<stage>_seconds`` from metrics.json (stage -> seconds)."""
        out = {}
        for k, v in self.metrics.items():
            if k.startswith("time/") and k.endswith("_seconds") and is_number(v):
                out[k[len("time/"):-len("_seconds")]] = float(v)
        return out


def at_eps(df: pd.DataFrame, eps_255: float, col: str = "eps_255") -> pd.DataFrame:
    """Rows of ``df`` whose eps (0-255 scale; from ``eps`` x 255 when there is no ``eps_255``) is ``eps_255``."""
    vals = df[col] if col in df else df["eps"] * 255.0
    return df[np.isclose(vals.to_numpy(dtype=float), float(eps_255), rtol=1e-6, atol=1e-9)]


def eps_values(df: pd.DataFrame) -> list[float]:
    vals = df["eps_255"] if "eps_255" in df else df["eps"] * 255.0
    return sorted(set(np.round(vals.to_numpy(dtype=float), 9).tolist()))
