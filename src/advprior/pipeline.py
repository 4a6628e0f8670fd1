"""Run the configured stages in order; each one reads what earlier stages wrote."""
from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable

from .context import RunContext
from .distributed import check_processes, is_rank_zero
from .utils.io import save_json

log = logging.getLogger(__name__)

# Stage name -> module holding ``run(ctx) -> metrics``; the order is the order they run in.
STAGES: dict[str, str] = {
    "train": "advprior.stages.train",
    "attack": "advprior.stages.attack_study",
    "prior": "advprior.stages.prior_fit",
    "defense": "advprior.stages.defense",
    "fooling": "advprior.stages.fooling",
    "activations": "advprior.stages.activations",
    "report": "advprior.stages.report",   # last: it only reads what the others stored
}
ALWAYS = ("train", "report")  # train: the other stages need the models; report: every run directory gets one


def stage_fn(name: str) -> Callable[[RunContext], dict]:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r} in `stages`; available: {list(STAGES)}")
    return importlib.import_module(STAGES[name]).run


def run_pipeline(ctx: RunContext) -> dict:
    """Run ``ctx.cfg.stages`` in pipeline order (``train`` always first as others need models, ``report``
    always last)."""
    check_processes(ctx.cfg)
    wanted = list(ctx.cfg.get("stages") or STAGES)
    for name in wanted:
        stage_fn(name)  # validate every name before any work
    order = [s for s in STAGES if s in wanted or s in ALWAYS]
    for name in order:
        t0 = time.perf_counter()
        log.info("stage %s: start", name)
        stage_fn(name)(ctx)
        ctx.metrics[f"time/{name}_seconds"] = time.perf_counter() - t0
        if is_rank_zero():  # after every stage: a crash keeps what was done
            save_json(ctx.metrics, ctx.run_dir / "metrics.json")
        log.info("stage %s: done in %.1f s", name, ctx.metrics[f"time/{name}_seconds"])
    return ctx.metrics
