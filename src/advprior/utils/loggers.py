"""Experiment loggers (W&B offline by default, CSV), kept inside the run directory.

The W&B run is started here (not by Lightning) so that its dashboard reads itself:

- per-epoch series (``train/*``, ``val/*``, ``val_attack/*``, ``test/*``, ``prior/*``) plot against ``epoch``;
- per-eps series (``attack/<model>/<metric>``, ``defense/<metric>``, logged by ``log_series`` from the stored
  tables) plot against ``eps_255``;
- one-off results (numbers logged without a step: a stage's final metrics) go to the run summary, not the
  history, so the workspace holds charts of real series only and the runs table holds the results;
- a multirun sweep's jobs share one group, and the swept parameters are config keys (``sweep.<key>``).
"""
from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger(__name__)

WANDB_DIR_VARS = {
    "WANDB_DIR": "",
    "WANDB_CACHE_DIR": ".cache",
    "WANDB_CONFIG_DIR": ".config",
    "WANDB_DATA_DIR": ".data",
    "WANDB_ARTIFACT_DIR": ".artifacts",
}
EPOCH_SERIES = ("train/*", "val/*", "val_attack/*", "test/*", "prior/*")
EPS_AXIS = "eps_255"


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def redirect_wandb_dirs(run_dir: str | Path) -> None:
    """Point every directory wandb writes to into ``run_dir/wandb`` (otherwise it uses ~/.cache/wandb)."""
    base = Path(run_dir) / "wandb"
    for var, sub in WANDB_DIR_VARS.items():
        d = base / sub if sub else Path(run_dir)
        d.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(d)
    os.environ.setdefault("WANDB_SILENT", "true")


class RunWandbLogger(WandbLogger):
    """``WandbLogger`` that sends numbers logged without a step (a stage's final results) to the run summary.

    Series logged with a step (Lightning's per-step and per-epoch metrics) and media go to the history as usual.
    """

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if step is None and metrics and all(_is_number(v) for v in metrics.values()):
            self.experiment.summary.update({k: float(v) for k, v in metrics.items()})
            return
        super().log_metrics(metrics, step)


def start_wandb_run(lcfg: DictConfig, cfg: DictConfig, run_dir: str | Path, group: str | None = None,
                    sweep: Mapping[str, str] | None = None):
    """``wandb.init`` from a logger config (offline unless ``offline: false``), files under ``run_dir/wandb``,
    the resolved config (+ ``sweep``: the swept parameters) and the dashboard's axes."""
    import wandb

    redirect_wandb_dirs(run_dir)
    offline = bool(lcfg.get("offline", True))
    os.environ["WANDB_MODE"] = "offline" if offline else "online"
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False).items()
              if k != "hydra"}
    if sweep:
        config["sweep"] = dict(sweep)
    run = wandb.init(
        project=lcfg.get("project"), entity=lcfg.get("entity"), name=lcfg.get("name"),
        group=lcfg.get("group") or group, job_type=lcfg.get("job_type"), tags=list(lcfg.get("tags") or []),
        dir=str(lcfg.get("save_dir") or run_dir), config=config, mode="offline" if offline else "online",
        settings=wandb.Settings(silent=True),
    )
    define_axes(run)
    return run


def define_axes(run) -> None:
    """Per-epoch series against ``epoch``, per-eps series (declared by ``log_series``) against ``eps_255``."""
    run.define_metric("epoch", hidden=True)
    run.define_metric("trainer/global_step", hidden=True)
    run.define_metric(EPS_AXIS, hidden=True)
    for pattern in EPOCH_SERIES:
        run.define_metric(pattern, step_metric="epoch")


def keep_previous_csv(lcfg: DictConfig) -> None:
    """A CSV logger with a fixed ``version`` reuses its directory; when a resumed run finds it non-empty, move
    the earlier logs to ``<dir>.<k>`` (Lightning would otherwise warn and delete them)."""
    if lcfg.get("version") is None:  # auto-incremented versions never collide
        return
    d = Path(lcfg.save_dir) / str(lcfg.get("name") or "") / str(lcfg.version)
    if d.is_dir() and any(d.iterdir()):
        k = 1
        while d.with_name(f"{d.name}.{k}").exists():
            k += 1
        d.rename(d.with_name(f"{d.name}.{k}"))
        log.info("csv logger: kept the earlier logs of this run directory in %s", d.with_name(f"{d.name}.{k}"))


def build_loggers(cfg: DictConfig, run_dir: str | Path, group: str | None = None,
                  sweep: Mapping[str, str] | None = None) -> dict[str, Logger]:
    """Instantiate ``cfg.logger`` (a dict name -> logger config) into Lightning loggers; a W&B logger gets
    its run from ``start_wandb_run``."""
    loggers: dict[str, Logger] = {}
    for name, lcfg in (cfg.get("logger") or {}).items():
        if lcfg is None:
            continue
        kwargs: dict[str, Any] = {}
        if "Wandb" in str(lcfg.get("_target_", "")):
            kwargs["experiment"] = start_wandb_run(lcfg, cfg, run_dir, group, sweep)
        elif "CSVLogger" in str(lcfg.get("_target_", "")):
            keep_previous_csv(lcfg)
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


def wandb_runs(ctx) -> list:
    """The W&B runs of ``ctx``'s loggers (rank 0; empty elsewhere or without a W&B logger)."""
    if rank_zero_only.rank != 0:
        return []
    return [lg.experiment for lg in ctx.loggers.values() if isinstance(lg, WandbLogger)]


def log_figure(ctx, key: str, path: str | Path) -> Path:
    """Send a saved figure to W&B as an image (rank 0); returns the path."""
    for run in wandb_runs(ctx):
        import wandb
        run.log({key: [wandb.Image(str(path))]})
    return Path(path)


def log_table(ctx, key: str, df) -> None:
    """Send a DataFrame to W&B as a table (rank 0); categorical and boolean columns become strings."""
    runs = wandb_runs(ctx)
    if not runs:
        return
    import wandb
    df = df.copy()
    for c in df.columns:
        if str(df[c].dtype) in ("category", "bool"):
            df[c] = df[c].astype(str)
    for run in runs:
        run.log({key: wandb.Table(dataframe=df)})


def log_series(ctx, points: Mapping[float, Mapping[str, float]], axis: str = EPS_AXIS) -> None:
    """Log series against ``axis`` (one history row per x, in increasing x): ``points`` maps x -> {key: y}.
    Each key is declared with ``define_metric(key, step_metric=axis)`` so W&B plots it against x."""
    runs = wandb_runs(ctx)
    keys = sorted({k for row in points.values() for k in row})
    for run in runs:
        for k in keys:
            run.define_metric(k, step_metric=axis)
        for x in sorted(points):
            row = {k: float(v) for k, v in points[x].items() if _is_number(v) and math.isfinite(float(v))}
            if row:
                run.log({axis: float(x), **row})


def log_summary(ctx, values: Mapping[str, Any]) -> None:
    """Set run-summary entries (the runs table's columns) on every W&B run (rank 0)."""
    for run in wandb_runs(ctx):
        run.summary.update(dict(values))


def log_artifact(ctx, path: str | Path, name: str, type: str) -> None:
    """Store a file as a W&B artifact ``<name>-<run id>`` (uploaded by ``wandb sync`` for offline runs)."""
    runs = wandb_runs(ctx)
    if not runs:
        return
    import wandb
    for run in runs:
        art = wandb.Artifact(f"{name}-{run.id}", type=type)
        art.add_file(str(path))
        run.log_artifact(art)
