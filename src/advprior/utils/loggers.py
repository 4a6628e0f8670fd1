"""Experiment loggers (W&B offline by default, CSV), kept inside the run directory."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

log = logging.getLogger(__name__)

WANDB_DIR_VARS = {
    "WANDB_DIR": "",
    "WANDB_CACHE_DIR": ".cache",
    "WANDB_CONFIG_DIR": ".config",
    "WANDB_DATA_DIR": ".data",
    "WANDB_ARTIFACT_DIR": ".artifacts",
}


def redirect_wandb_dirs(run_dir: str | Path) -> None:
    """Point every directory wandb writes to into ``run_dir/wandb`` (otherwise it uses ~/.cache/wandb)."""
    base = Path(run_dir) / "wandb"
    for var, sub in WANDB_DIR_VARS.items():
        d = base / sub if sub else Path(run_dir)
        d.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(d)
    os.environ.setdefault("WANDB_SILENT", "true")


def build_loggers(cfg: DictConfig, run_dir: str | Path, group: str | None = None) -> dict[str, Logger]:
    """Instantiate ``cfg.logger`` (a dict name -> logger config) into Lightning loggers."""
    loggers: dict[str, Logger] = {}
    for name, lcfg in (cfg.get("logger") or {}).items():
        if lcfg is None:
            continue
        kwargs: dict[str, Any] = {}
        if "WandbLogger" in str(lcfg.get("_target_", "")):
            redirect_wandb_dirs(run_dir)
            os.environ["WANDB_MODE"] = "offline" if lcfg.get("offline", True) else "online"
            kwargs["config"] = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False).items()
                               if k != "hydra"}
            if group and not lcfg.get("group"):
                kwargs["group"] = group
        # `config` is also instantiate()'s own first parameter: pass extras to the partial instead
        loggers[name] = instantiate(lcfg, _partial_=True)(**kwargs)
    return loggers


def finish_wandb(loggers: dict[str, Logger], failed: bool = False) -> None:
    """Always close the W&B run (also when the pipeline raised), marking it failed if it did."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


def _wandb_loggers(ctx) -> list:
    from pytorch_lightning.loggers import WandbLogger
    return [lg for lg in ctx.loggers.values() if isinstance(lg, WandbLogger)]


def log_figure(ctx, key: str, path: str | Path) -> Path:
    """Send a saved figure to W&B as an image (rank 0); returns the path."""
    import pytorch_lightning as pl
    if pl.utilities.rank_zero_only.rank == 0:
        for lg in _wandb_loggers(ctx):
            lg.log_image(key=key, images=[str(path)])
    return Path(path)


def log_table(ctx, key: str, df) -> None:
    """Send a DataFrame to W&B as a table (rank 0); categorical columns become strings."""
    import pytorch_lightning as pl
    if pl.utilities.rank_zero_only.rank != 0 or not _wandb_loggers(ctx):
        return
    df = df.copy()
    for c in df.columns:
        if str(df[c].dtype) in ("category", "bool"):
            df[c] = df[c].astype(str)
    for lg in _wandb_loggers(ctx):
        lg.log_table(key=key, dataframe=df)
