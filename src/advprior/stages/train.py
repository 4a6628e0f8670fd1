"""Stage ``train``: build every configured model; train the small ones (cached in the store, keyed as ``TRAIN_KEY``
declares; a model not trained here is identified as ``PRETRAINED_KEY`` declares).

Under DDP every rank trains together (Lightning's data-parallel ``fit`` on the configured strategy: the
trainer settings are part of the model's key, so a DDP-trained model never stands in for a one-process
one); rank 0 alone stores the weights, the others wait for it.
"""
from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from .. import distributed
from ..context import RunContext
from ..identity import weights_digest
from ..keys import (AFFECTS, COMMON, CONTENT, IGNORED, TRAINER_OUTPUT, TRAINER_VALIDATION, KeySpec, data_rules,
                    model_key, not_read, register)
from ..models.checkpoint import load_state_dict_into
from ..models.classifier import Classifier
from ..models.lit_classifier import ClassifierModule
from ..models.vgg import ARCHS, hub_weights_path
from ..store import link_into
from ..utils.io import load_torch, save_torch
from ..utils.progress import lightning_progress
from ..utils.seeding import seed_everything

log = logging.getLogger(__name__)


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
    checkpoint = None if "checkpoint" in params else spec.pop("checkpoint", None)
    c, h, _ = datamodule.input_shape
    for k, v in (("num_classes", datamodule.num_classes), ("in_channels", c), ("image_size", h)):
        if k in params and k not in spec:
            spec[k] = v
    model = instantiate(spec)
    if checkpoint:
        load_state_dict_into(model, checkpoint)
    return model


def model_identity(ctx: RunContext, name: str) -> str:
    """A key for model ``name``'s weights: its training key (``TRAIN_KEY``), or when not trained here its
    config and the content of its weight file (``PRETRAINED_KEY``)."""
    return model_key(ctx, name)


def weights_file(mcfg: DictConfig) -> Path | None:
    """The file a pretrained model's weights come from: its checkpoint, or torchvision's hub file."""
    if mcfg.get("checkpoint"):
        return Path(str(mcfg.checkpoint)).expanduser()
    if mcfg.get("weights") == "imagenet" and mcfg.get("arch") in ARCHS:
        return hub_weights_path(str(mcfg.arch))
    return None


def pretrained_weights(ctx: RunContext, name: str) -> dict:
    """Content identity of a model not trained here: its weight file's hash, or what its random init
    depends on (seed, class count, input shape)."""
    path = weights_file(ctx.cfg.model[name])
    if path is not None:
        return {"weights": weights_digest(path, ctx.store.weights_cache)}
    dm = ctx.datamodule
    return {"random_init": {"seed": int(ctx.cfg.seed), "num_classes": dm.num_classes,
                            "input_shape": list(dm.input_shape)}}


TRAIN_KEY = register(KeySpec(
    "train", per_model=True,
    code=("stages/train.py", "models/", "data/", "utils/seeding.py"),
    content=lambda ctx, model: ctx.datamodule.identity("fit"),
    rules=(
        ("model.{model}.frozen", IGNORED),  # eval mode, no parameter gradients after training: same weights
        ("model.{model}.*", AFFECTS),
        ("model.*", IGNORED),  # the other models
        ("seed", AFFECTS),  # initialization, dropout, shuffling
        *data_rules(affects=("batch_size", "seed")),  # seed: the split (content) and the shuffling
        *[(f"trainer.{k}", IGNORED) for k in TRAINER_OUTPUT + TRAINER_VALIDATION],
        ("trainer.*", AFFECTS),  # epochs, batch limits, precision, devices...; limit_test_batches: the test accuracy
        ("compute.channels_last", IGNORED),  # the image stages' loops only
        ("target_model", IGNORED), *not_read("attack", "prior", "defense", "fooling", "activations"),
        *COMMON,
    ),
))

PRETRAINED_KEY = register(KeySpec(
    "pretrained", per_model=True,
    code=("models/",),
    content=lambda ctx, model: pretrained_weights(ctx, model),
    rules=(
        ("model.{model}.frozen", IGNORED),
        ("model.{model}.allow_download", IGNORED),  # where the file comes from, not what it holds
        ("model.{model}.checkpoint", CONTENT),
        ("model.{model}.weights", CONTENT),
        ("model.{model}.*", AFFECTS),
        ("model.*", IGNORED),
        ("seed", CONTENT),  # a random init's weights
        *data_rules(),  # only the class count and input shape of a random init
        ("trainer.*", IGNORED),  # nothing is trained; the stages that run the model declare precision etc.
        ("compute.channels_last", IGNORED),
        ("target_model", IGNORED), *not_read("attack", "prior", "defense", "fooling", "activations"),
        *COMMON,
    ),
))


def make_trainer(ctx: RunContext, name: str, max_epochs: int, **overrides) -> pl.Trainer:
    """A Trainer from ``cfg.trainer`` with the run's loggers, the ``cfg.callbacks`` and a progress bar."""
    callbacks = [instantiate(c) for c in (ctx.cfg.get("callbacks") or {}).values() if c is not None]
    bar = lightning_progress(ctx.cfg.trainer.get("enable_progress_bar", True))  # Rich, on a terminal only
    kwargs = dict(
        max_epochs=max_epochs,
        logger=list(ctx.loggers.values()) or False,
        callbacks=callbacks,
        default_root_dir=str(ctx.run_dir / "models" / name),
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    kwargs.update(overrides)
    if any(isinstance(c, ProgressBar) for c in kwargs["callbacks"]):  # the caller brings its own bar
        kwargs["enable_progress_bar"] = True
    else:
        kwargs["callbacks"] = [*kwargs["callbacks"], *bar["callbacks"]]
        kwargs["enable_progress_bar"] = bar["enable_progress_bar"]
    return instantiate(ctx.cfg.trainer, **kwargs)


def fit_model(ctx: RunContext, name: str, model: Classifier) -> dict:
    """Train ``model`` in place as ``model.<name>.train`` says; returns its test metrics."""
    cfg, dm = ctx.cfg, ctx.datamodule
    tcfg = cfg.model[name].train
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
    log.info("model %s: test acc %.4f after %d epochs in %.1f s", name, metrics[f"train/{name}/test_acc"],
             epochs, seconds)
    return metrics


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
    with distributed.claim(ctx.store, "train", model_identity(ctx, name)) as art:
        if art.done:
            log.info("model %s: reusing trained weights %s", name, art.dir)
            model.load_state_dict(load_torch(art.dir / "model.pt"))
            metrics = art.meta
        else:
            metrics = fit_model(ctx, name, model)
            if distributed.is_rank_zero():  # DDP keeps every rank's weights equal: rank 0 stores them
                save_torch(model.state_dict(), art.dir / "model.pt")
            art.commit(metrics)
    if distributed.is_rank_zero():
        link_into(art.dir / "model.pt", ctx.run_dir / "models" / f"{name}.pt")
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
