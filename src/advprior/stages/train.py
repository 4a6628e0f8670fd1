"""Stage ``train``: build every configured model; train the small ones (cached by config hash).

Under DDP every rank trains together (Lightning's data-parallel ``fit`` on the configured strategy: the
trainer settings are part of the model's key, so a DDP-trained model never stands in for a one-process
one); rank 0 alone stores the weights, the others wait for it.
"""
from __future__ import annotations

import inspect
import logging
import time
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .. import distributed
from ..context import RunContext
from ..models.checkpoint import load_state_dict_into
from ..models.classifier import Classifier
from ..models.lit_classifier import ClassifierModule
from ..store import config_without, link_into
from ..utils.io import load_torch, save_torch
from ..utils.seeding import seed_everything

log = logging.getLogger(__name__)

STAGE_VERSION = 1
# Data keys that change how data is served, not what a model learns from.
DATA_KEYS_IGNORED = {"num_workers", "eval_batch_size", "eval_subset", "support_per_class", "pin_memory"}


def build_model(mcfg: DictConfig, datamodule: Any) -> Classifier:
    """Instantiate a model config, filling ``num_classes``/``in_channels``/``image_size`` from the data.

    ``checkpoint`` (a state dict path, read with ``weights_only=True``) is loaded after building when the
    model's own builder does not take it (e.g. ``model.vgg_small.checkpoint=... model.vgg_small.train=null``).
    """
    spec = OmegaConf.to_container(mcfg, resolve=True)
    spec.pop("train", None)
    spec.pop("frozen", None)
    fn = instantiate({"_target_": spec["_target_"], "_partial_": True})
    params = inspect.signature(fn.func).parameters
    checkpoint = spec.pop("checkpoint", None) if "checkpoint" not in params else None
    c, h, _ = datamodule.input_shape
    for k, v in (("num_classes", datamodule.num_classes), ("in_channels", c), ("image_size", h)):
        if k in params and k not in spec:
            spec[k] = v
    model = instantiate(spec)
    if checkpoint:
        load_state_dict_into(model, checkpoint)
    return model


# Trainer keys that do not change the trained weights.
TRAINER_KEYS_IGNORED = {"enable_progress_bar", "log_every_n_steps", "num_sanity_val_steps", "limit_val_batches",
                        "limit_test_batches", "enable_model_summary", "default_root_dir"}


def model_key_payload(name: str, mcfg: DictConfig, cfg: DictConfig) -> dict:
    """Everything the trained weights depend on: model, data, trainer settings (epochs, batch limits,
    precision, devices...) and the seed."""
    data = config_without(cfg.data, DATA_KEYS_IGNORED)
    trainer = config_without(cfg.trainer, TRAINER_KEYS_IGNORED)
    return {"model": OmegaConf.to_container(mcfg, resolve=True), "data": data, "trainer": trainer,
            "seed": int(cfg.seed), "version": STAGE_VERSION}


def model_identity(ctx: RunContext, name: str) -> object:
    """What determines model ``name``'s weights: its training key, or its config if not trained here."""
    mcfg = ctx.cfg.model[name]
    if mcfg.get("train") is None:
        return OmegaConf.to_container(mcfg, resolve=True)
    return ctx.store.key("train", model_key_payload(name, mcfg, ctx.cfg))


def make_trainer(ctx: RunContext, name: str, max_epochs: int, **overrides) -> pl.Trainer:
    """A Trainer from ``cfg.trainer`` with the run's loggers, the ``cfg.callbacks`` and a progress bar."""
    callbacks = [instantiate(c) for c in (ctx.cfg.get("callbacks") or {}).values() if c is not None]
    if ctx.cfg.trainer.get("enable_progress_bar", True) and ctx.cfg.get("extras", {}).get("rich_progress", True):
        callbacks.append(pl.callbacks.RichProgressBar())
    kwargs = dict(
        max_epochs=max_epochs,
        logger=list(ctx.loggers.values()) or False,
        callbacks=callbacks,
        default_root_dir=str(ctx.run_dir / "models" / name),
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    kwargs.update(overrides)
    return instantiate(ctx.cfg.trainer, **kwargs)


def train_or_load(ctx: RunContext, name: str) -> tuple[Classifier, dict]:
    """The trained (or pretrained, frozen) model ``name`` and its metrics, reusing a cached result."""
    cfg, dm = ctx.cfg, ctx.datamodule
    mcfg = cfg.model[name]
    seed_everything(cfg.seed)  # each model's init depends on the seed only, not on the models before it
    model = build_model(mcfg, dm)
    if mcfg.get("train") is None:
        if mcfg.get("frozen", True):
            model.freeze()
        return model, {}
    key = model_identity(ctx, name)
    out = ctx.store.path("train", key)
    if distributed.broadcast_object(ctx.store.is_done("train", key)):  # rank 0 decides for every rank
        log.info("model %s: reusing trained weights %s", name, out)
        model.load_state_dict(load_torch(out / "model.pt"))
        metrics = ctx.store.read_meta("train", key)
    else:
        tcfg = mcfg.train
        module = ClassifierModule(model, instantiate(tcfg.optimizer), frozen=False, name=name,
                                  lr_schedule=tcfg.get("lr_schedule"))
        epochs = int(cfg.trainer.get("max_epochs") or tcfg.epochs)
        trainer = make_trainer(ctx, name, epochs)
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        seconds = time.perf_counter() - t0
        bad = lazily_skipped(trainer.train_dataloader)
        res = trainer.test(module, datamodule=dm, verbose=False)[0]
        metrics = {f"train/{name}/test_acc": float(res[f"test/{name}/acc"]),
                   f"train/{name}/test_acc_top5": float(res[f"test/{name}/acc_top5"]),
                   f"train/{name}/fit_seconds": seconds,
                   f"train/{name}/epochs": epochs}
        if bad is not None:
            metrics["data/bad_files/train"] = bad
        if distributed.is_rank_zero():  # DDP keeps every rank's weights equal: rank 0 stores them
            save_torch(model.state_dict(), out / "model.pt")
            ctx.store.mark_done("train", key, meta=metrics)
        distributed.barrier()
        log.info("model %s: test acc %.4f after %d epochs in %.1f s", name, metrics[f"train/{name}/test_acc"],
                 epochs, seconds)
    if distributed.is_rank_zero():
        link_into(out / "model.pt", ctx.run_dir / "models" / f"{name}.pt")
    model.eval()
    if mcfg.get("frozen", True):
        model.freeze()
    return model, metrics


def lazily_skipped(loader: Any) -> int | None:
    """Undecodable files a training pass dropped (``SkipNoneCollate``), over every rank; None when the
    dataset has no image files."""
    dataset = getattr(loader, "dataset", None)
    if not hasattr(dataset, "bad_files"):
        return None
    return len({p for part in distributed.all_gather_object(dataset.bad_files) for p in part})


def run(ctx: RunContext) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name in ctx.cfg.model:
        model, m = train_or_load(ctx, name)
        ctx.models[name] = model
        metrics.update(m)
    ctx.log_metrics(metrics)
    return metrics
