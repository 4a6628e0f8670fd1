"""The ``advprior`` command: a Hydra app that runs the pipeline on the composed config."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger("advprior")

CONFIG_DIR = os.environ.get("ADVPRIOR_CONFIG_DIR", str(Path(__file__).resolve().parents[2] / "conf"))


def run_task(cfg: DictConfig) -> dict:
    """Validate, seed, save the config, run the pipeline; the W&B run is always finished."""
    from .context import RunContext
    from .pipeline import run_pipeline
    from .store import ArtifactStore
    from .utils.config_tree import save_config_tree
    from .utils.loggers import build_loggers, finish_wandb
    from .utils.seeding import seed_everything
    from .validation import validate_config

    validate_config(cfg)
    hc = HydraConfig.get()
    run_dir = Path(cfg.paths.output_dir)
    log.info("run directory: %s", run_dir)
    log.info("config:\n%s", save_config_tree(cfg, run_dir / "config_tree.txt"))
    seed_everything(cfg.seed)
    group = cfg.get("wandb_group")
    if group is None and hc.mode == RunMode.MULTIRUN:
        group = f"{cfg.task_name}-{Path(hc.sweep.dir).name}"  # one W&B group per multirun sweep
    loggers = build_loggers(cfg, run_dir, group=group)
    ctx = RunContext(cfg=cfg, run_dir=run_dir, store=ArtifactStore(cfg.paths.store_dir), loggers=loggers)
    failed = True
    try:
        metrics = run_pipeline(ctx)
        failed = False
    finally:
        for lg in loggers.values():
            lg.finalize("failed" if failed else "success")
        finish_wandb(loggers, failed=failed)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from .distributed import session

    with session(cfg):  # several devices: one process per rank and the process group, torn down at the end
        metrics = run_task(cfg)
    name = cfg.get("optimized_metric")
    return float(metrics[name]) if name and name in metrics else None


if __name__ == "__main__":
    main()
