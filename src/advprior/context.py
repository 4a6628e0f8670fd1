"""What every stage receives: the config, the run directory, the artifact store, loggers and models."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger

from .models.classifier import Classifier
from .store import ArtifactStore

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    store: ArtifactStore
    loggers: dict[str, Logger] = field(default_factory=dict)
    models: dict[str, Classifier] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    priors: dict[str, Any] = field(default_factory=dict)
    _datamodule: pl.LightningDataModule | None = None

    @property
    def datamodule(self) -> pl.LightningDataModule:
        """The configured DataModule, built once and set up."""
        if self._datamodule is None:
            self._datamodule = instantiate(self.cfg.data)
            self._datamodule.setup()
        return self._datamodule

    @property
    def target_model(self) -> str:
        """The model the attack study and the defense focus on (``target_model``, else the first model)."""
        return self.cfg.get("target_model") or next(iter(self.cfg.model))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record metrics for metrics.json and send them to every logger (rank 0 only)."""
        self.metrics.update(metrics)
        if pl.utilities.rank_zero_only.rank != 0:
            return
        for lg in self.loggers.values():
            lg.log_metrics(metrics, step=step)
