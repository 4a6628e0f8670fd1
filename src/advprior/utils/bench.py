"""The one result format of every ``scripts/bench_*.py``: measured ratios with their targets and the machine.

A script builds ``BenchRow``s and calls ``write_results(path, script, rows)``; ``make bench`` collects every
results file into one table. Ratios are measured side by side in one run (medians of repeats), never
compared across runs.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .io import save_json
from .machine import machine_info


def timed(device, fn) -> float:  # noqa: ANN001
    """Wall seconds of ``fn()`` on ``device`` (a torch device): CUDA work is synchronized before and after."""
    import time

    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


@dataclass
class BenchRow:
    """One measured comparison.

    ``name``: what is compared (``"FGSM vs bare forward+backward"``); ``value``: the measured number;
    ``unit``: ``"x"`` (ratio), ``"%"``, ``"s"``, ``"img/s"``...; ``target``: the floor or ceiling as text
    (``">= 3x"``, ``"<= 5%"``) or None; ``holds``: whether the target holds (None without a target);
    ``detail``: the raw timings or setting behind the number.
    """

    name: str
    value: float
    unit: str
    target: str | None = None
    holds: bool | None = None
    detail: str = ""


def write_results(path: str | os.PathLike, script: str, rows: list[BenchRow], settings: dict | None = None) -> Path:
    """Write ``{"script", "when", "machine", "settings", "rows"}`` as JSON (atomically)."""
    return save_json({
        "script": script,
        "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": settings or {},
        "rows": [asdict(r) for r in rows],
    }, path)


def read_results(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())
