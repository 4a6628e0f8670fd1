"""The LightningModule that trains a small ``Classifier`` or wraps a pretrained one frozen."""
from __future__ import annotations

import logging
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from .classifier import Classifier

log = logging.getLogger(__name__)


class ClassifierModule(pl.LightningModule):
    """Cross-entropy training with top-1/top-5 accuracy (torchmetrics); ``frozen=True`` only evaluates.

    Args:
        model: the ``Classifier`` ([0,1] images -> logits).
        optimizer: a partial optimizer (``_partial_: true`` in config), finished in ``configure_optimizers``.
        frozen: eval mode and no gradients for every parameter (pretrained VGGs).
        name: metric prefix, e.g. ``vgg_small`` -> ``train/vgg_small/loss``.
        lr_schedule: ``cosine`` (anneal to 0 over the run's epochs, stepped per epoch) or ``None``.
    """

    def __init__(
        self,
        model: Classifier,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        frozen: bool = False,
        name: str = "model",
        lr_schedule: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer"])
        if lr_schedule not in (None, "none", "cosine"):
            raise ValueError(f"lr_schedule must be 'cosine' or null, got {lr_schedule!r}")
        self.model, self.optimizer_factory, self.frozen, self.name = model, optimizer, frozen, name
        self.lr_schedule = lr_schedule if lr_schedule != "none" else None
        k = model.num_classes
        self.metrics = torch.nn.ModuleDict({
            f"{split}_{m}": MulticlassAccuracy(k, top_k=min(t, k), average="micro")
            for split in ("train", "val", "test") for m, t in (("acc", 1), ("acc_top5", 5))
        })
        if frozen:
            model.freeze()
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        self.param_counts = {"trainable": n_train, "frozen": n_frozen}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def train(self, mode: bool = True):  # a frozen model stays in eval mode (dropout off, BN stats fixed)
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def on_fit_start(self) -> None:
        counts = {f"params/{self.name}/{k}": float(v) for k, v in self.param_counts.items()}
        for lg in self.loggers:
            lg.log_metrics(counts, step=0)
        log.info("model %s: %d trainable, %d frozen parameters", self.name, *self.param_counts.values())

    def _step(self, batch, split: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        for m in ("acc", "acc_top5"):
            metric = self.metrics[f"{split}_{m}"]
            metric(logits, y)
            self.log(f"{split}/{self.name}/{m}", metric, on_step=False, on_epoch=True, prog_bar=m == "acc")
        self.log(f"{split}/{self.name}/loss", loss, on_step=split == "train", on_epoch=True,
                 prog_bar=split == "train", sync_dist=split != "train")
        return loss

    def training_step(self, batch, batch_idx):
        if self.frozen:
            raise RuntimeError(f"model {self.name} is frozen; set its train config to null instead of training it")
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError(f"model {self.name}: no optimizer configured (model.{self.name}.train.optimizer)")
        opt = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.lr_schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.trainer.max_epochs))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        return opt
