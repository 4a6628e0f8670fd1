"""The support set's feature cache: named-layer activations (fc6) extracted once, as a Lightning loop in
resumable pieces (``advprior.loops``), on the trainer's accelerator and devices."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import Dataset

from ..loops import Table, run_loop
from ..utils.io import load_torch

log = logging.getLogger(__name__)

TABLES = (Table("features", kind="torch", index_key="indices"),)


class FeatureStep:
    """``step(x, y, idx) -> {"features": {"features": (B, D) float32, "labels": (B,), "indices": (B,)}}``:
    the flattened activations of ``layer`` (a ``Classifier`` layer name)."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        self.model, self.layer = model, layer

    def __call__(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        f = self.model.features(x, [self.layer])[self.layer].flatten(1)
        return {"features": {"features": f.float(), "labels": torch.as_tensor(y).long(),
                             "indices": torch.as_tensor(idx).long()}}


def check_support(dataset: Dataset) -> None:
    if len(dataset) == 0:
        raise ValueError("the support set is empty: check data.support_per_class and the training split")


def extract_features(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    out_dir: str | Path,
    batch_size: int = 128,
    shard_size: int = 4096,
    num_workers: int = 0,
    input_shape: tuple[int, ...] | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Activations of ``layer`` for every image of ``dataset``, cached under ``out_dir``.

    A Lightning loop (``pl.Trainer(**trainer_kwargs)``, default one CPU device, no logger or bar) in pieces
    of at most ``shard_size`` images, each written atomically, so an interrupted extraction resumes where
    it stopped; the pieces are then merged into ``out_dir/features.pt``. Returns ``features`` (N, D)
    float32 (flattened), ``labels`` (N,) and ``indices`` (N,) (dataset positions), in dataset order;
    undecodable images are left out.
    """
    check_support(dataset)
    kwargs = dict(accelerator="cpu", devices=1, logger=False, enable_model_summary=False, enable_checkpointing=False)
    kwargs.update(trainer_kwargs or {})

    def make_trainer(**overrides: Any) -> pl.Trainer:
        return pl.Trainer(**{**kwargs, **overrides})

    run_loop(dataset, FeatureStep(model, layer), {"model": model}, TABLES, out_dir, make_trainer=make_trainer,
             shard_size=shard_size, batch_size=batch_size, num_workers=num_workers,
             input_shape=input_shape or getattr(model, "input_size", None) or (3, 224, 224))
    return load_torch(Path(out_dir) / "features.pt")
