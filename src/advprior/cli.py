"""The ``advprior`` command: a Hydra app that runs the pipeline on the composed config."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("advprior")

CONFIG_DIR = os.environ.get("ADVPRIOR_CONFIG_DIR", str(Path(__file__).resolve().parents[2] / "conf"))


def save_run_record(cfg: DictConfig, run_dir: Path) -> str:
    """Write what a report needs to describe the run: ``config_tree.txt``, the resolved ``config.yaml`` and
    ``machine.json``; returns the config tree's text."""
    from .report.rundata import CONFIG_FILE, MACHINE_FILE
    from .utils.config_tree import save_config_tree
    from .utils.io import atomic_write, save_json
    from .utils.machine import machine_info

    tree = save_config_tree(cfg, run_dir / "config_tree.txt")
    resolved = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}
    atomic_write(run_dir / CONFIG_FILE, lambda p: p.write_text(OmegaConf.to_yaml(OmegaConf.create(resolved))))
    save_json(machine_info(), run_dir / MACHINE_FILE)
    return tree


def sweep_group(cfg: DictConfig) -> tuple[str | None, dict[str, str]]:
    """The W&B group (``wandb_group``, else one per multirun sweep) and this job's swept parameters."""
    from .utils.multirun import swept_parameters

    hc = HydraConfig.get()
    group = cfg.get("wandb_group")
    if hc.mode != RunMode.MULTIRUN:
        return group, {}
    return group or f"{cfg.task_name}-{Path(hc.sweep.dir).name}", swept_parameters(hc)


def run_task(cfg: DictConfig, validate: bool = True) -> dict:
    """Validate (unless the caller did), seed, save the config, run the pipeline, print the headline table;
    the W&B run is always finished."""
    from .validation import validate_config

    if validate:
        validate_config(cfg)  # first: a bad value fails before torch and Lightning are even imported
    from .context import RunContext
    from .pipeline import run_pipeline
    from .report.headlines import headline_rows
    from .report.html import REPORT_FILE
    from .report.terminal import headline_table_text
    from .store import ArtifactStore
    from .utils import progress
    from .utils.loggers import build_loggers, finish_wandb
    from .utils.quiet import quiet_libraries
    from .utils.seeding import seed_everything

    quiet_libraries()
    extras = cfg.get("extras") or {}
    progress.configure(extras.get("rich_progress", True))
    run_dir = Path(cfg.paths.output_dir)
    log.info("run directory: %s", run_dir)
    tree = save_run_record(cfg, run_dir)
    if extras.get("print_config", False):
        log.info("config:\n%s", tree)
    seed_everything(cfg.seed)
    group, sweep = sweep_group(cfg)
    loggers = build_loggers(cfg, run_dir, group=group, sweep=sweep)
    ctx = RunContext(cfg=cfg, run_dir=run_dir, store=ArtifactStore(cfg.paths.store_dir), loggers=loggers)
    failed = True
    try:
        metrics = run_pipeline(ctx)
        failed = False
    finally:
        for lg in loggers.values():
            lg.finalize("failed" if failed else "success")
        finish_wandb(loggers, failed=failed)
    from pytorch_lightning.utilities import rank_zero_only
    if rank_zero_only.rank == 0:
        report = run_dir / REPORT_FILE
        log.info("%s", headline_table_text(headline_rows(run_dir), report if report.is_file() else None))
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from .validation import validate_config

    validate_config(cfg)  # before any process is started or torch imported
    from .distributed import session

    with session(cfg):  # several devices: one process per rank and the process group, torn down at the end
        metrics = run_task(cfg, validate=False)
    name = cfg.get("optimized_metric")
    return float(metrics[name]) if name and name in metrics else None


if __name__ == "__main__":
    main()
