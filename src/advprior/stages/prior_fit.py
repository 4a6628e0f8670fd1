"""Stage ``prior``: fit the paper's class-conditional prior p(r|y,x) on the target model's support features.

fc6 features of ``data.support_per_class`` training images per class (a Lightning loop on the trainer's
devices, split over the ranks, cached and resumable) -> per-class PCA -> per-class autoencoders (one
batched LightningModule) -> per-class Gaussian KDE (or, ``prior.space=shared``, one PCA and autoencoder for
all classes and a class-conditional KDE), fitted once, by rank 0, on its GPU when the trainer uses GPUs; the
other ranks read the fitted prior from the store. Both cached in the store (``features``, ``prior``), keyed
as ``FEATURES_KEY`` and ``PRIOR_KEY`` declare.
"""
from __future__ import annotations

import logging

import torch

from .. import distributed
from ..context import RunContext
from ..keys import AFFECTS, COMMON, CONTENT, IGNORED, KeySpec, data_rules, not_read, register, stage_key
from ..loops import bad_file_metrics, stage_loop, stage_models
from ..prior import BatchedAutoencoder, ClassConditionalKDE, ClassPCA, ClassPrior, fit_class_prior
from ..prior.features import TABLES as FEATURE_TABLES
from ..prior.features import FeatureStep, check_support
from ..utils.io import load_torch, save_torch
from ..utils.progress import lightning_progress

log = logging.getLogger(__name__)


def support_per_class(ctx: RunContext) -> int | None:
    v = ctx.cfg.prior.get("support_per_class")
    return int(v) if v is not None else ctx.cfg.data.get("support_per_class")


FEATURES_KEY = register(KeySpec(
    "features", inputs=("target_model",),
    code=("stages/prior_fit.py", "prior/features.py", "data/"),
    content=lambda ctx, model: ctx.datamodule.identity("support", per_class=support_per_class(ctx)),
    rules=(
        ("target_model", AFFECTS), ("prior.feature_layer", AFFECTS),
        ("prior.support_per_class", CONTENT),  # which images: through the support set's identity
        ("prior.*", IGNORED),  # shard_size: resumable chunks of the same rows; the rest is the fit
        ("trainer.accelerator", AFFECTS), ("trainer.precision", AFFECTS),  # numerics of the forward pass
        ("compute.channels_last", AFFECTS),
        ("trainer.*", IGNORED),
        ("model.*", IGNORED),  # the target model enters through its identity
        ("seed", IGNORED),  # a forward pass; the support choice enters through data.seed
        *data_rules(),
        *not_read("attack", "defense", "fooling", "activations"),
        *COMMON,
    ),
))

PRIOR_KEY = register(KeySpec(
    "prior", inputs=("features",),
    code=("stages/prior_fit.py", "prior/pca.py", "prior/autoencoder.py", "prior/kde.py", "prior/class_prior.py"),
    rules=(
        ("prior.n_components", AFFECTS), ("prior.bottleneck", AFFECTS), ("prior.depth", AFFECTS),
        ("prior.negative_slope", AFFECTS), ("prior.bandwidth", AFFECTS), ("prior.kernel_cov", AFFECTS),
        ("prior.cv_folds", AFFECTS), ("prior.ae.*", AFFECTS), ("prior.space", AFFECTS),
        ("prior.standardize", AFFECTS), ("prior.val_fraction", AFFECTS),
        ("prior.*", IGNORED),  # feature_layer, support_per_class: through the features; weight, top_k: the defense
        ("seed", AFFECTS),  # autoencoder init and batches, KDE cross-validation folds
        ("trainer.*", IGNORED),  # the autoencoders train on their own Trainer
        ("compute.channels_last", IGNORED),
        ("target_model", IGNORED), ("model.*", IGNORED), *data_rules(content=IGNORED),  # through the features
        *not_read("attack", "defense", "fooling", "activations"),
        *COMMON,
    ),
))


def features_key(ctx: RunContext) -> str:
    return stage_key(ctx, FEATURES_KEY)


def prior_key(ctx: RunContext) -> str:
    return stage_key(ctx, PRIOR_KEY)


def empty_prior(num_classes: int, pcfg) -> ClassPrior:
    """An unfitted ClassPrior of the configured shape, ready for ``load_state_dict``."""
    space = str(pcfg.get("space", "per_class"))
    return ClassPrior(
        ClassPCA(int(pcfg.n_components)),
        BatchedAutoencoder(num_classes if space == "per_class" else 1, int(pcfg.n_components),
                           int(pcfg.bottleneck), pcfg.get("depth"), float(pcfg.negative_slope)),
        ClassConditionalKDE(), space=space, num_classes=num_classes,
    )


def ensure_features(ctx: RunContext) -> str:
    """The support set's features in the store (computed by every rank together when missing); their key."""
    cfg = ctx.cfg
    key = features_key(ctx)
    with distributed.claim(ctx.store, "features", key) as art:
        if art.done:
            return key
        dataset = ctx.datamodule.support_dataset(support_per_class(ctx))
        check_support(dataset)
        models = stage_models({"target": ctx.models[ctx.target_model]}, cfg.trainer.precision)
        result = stage_loop(ctx, "features", dataset, FeatureStep(models["target"], cfg.prior.feature_layer), models,
                            FEATURE_TABLES, art.dir, shard_size=int(cfg.prior.shard_size))
        meta = {}
        if distributed.is_rank_zero():
            feats = load_torch(art.dir / "features.pt")
            meta = {"n": len(feats["labels"]), "dim": int(feats["features"].shape[1]),
                    "bad_files": bad_file_metrics(dataset, "support", result.skipped)}
        art.commit(meta)
    return key


def fit_device(cfg) -> torch.device:
    """Where rank 0 fits the prior: its GPU when the trainer runs on GPUs, else the CPU."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def fit_prior(ctx: RunContext, fkey: str) -> tuple[ClassPrior, dict]:
    """Rank 0's work: fit the prior on the stored features (on ``fit_device``); returns it (on the CPU) and
    its description (the stage's metrics)."""
    cfg, pcfg = ctx.cfg, ctx.cfg.prior
    feats = load_torch(ctx.store.path("features", fkey) / "features.pt")
    device = fit_device(cfg)
    x, y = feats["features"].to(device), feats["labels"].to(device)
    bw = pcfg.bandwidth
    trainer_kwargs = {"logger": list(ctx.loggers.values()) or False, "log_every_n_steps": 1,  # per-epoch loss curve
                      "accelerator": "gpu" if device.type == "cuda" else "cpu",
                      "devices": [device.index] if device.type == "cuda" else 1,
                      **lightning_progress(cfg.trainer.get("enable_progress_bar", True))}
    prior = fit_class_prior(
        x, y, ctx.datamodule.num_classes,
        n_components=int(pcfg.n_components), bottleneck=int(pcfg.bottleneck), depth=pcfg.get("depth"),
        negative_slope=float(pcfg.negative_slope), bandwidth=float(bw) if isinstance(bw, (int, float)) else str(bw),
        kernel_cov=str(pcfg.kernel_cov), cv_folds=int(pcfg.cv_folds), epochs=int(pcfg.ae.epochs),
        batch_size=int(pcfg.ae.batch_size), lr=float(pcfg.ae.lr), seed=int(cfg.seed), trainer_kwargs=trainer_kwargs,
        space=str(pcfg.space), standardize=bool(pcfg.standardize), val_fraction=float(pcfg.val_fraction),
        patience=None if pcfg.ae.get("patience") is None else int(pcfg.ae.patience),
        min_delta=float(pcfg.ae.get("min_delta") or 0.0),
    )
    evr = prior.pca.explained_variance_ratio_.sum(1)
    with torch.no_grad():  # each support point under its own class only (not all C classes)
        own = torch.cat([prior(xs, classes=ys[:, None]).squeeze(1) for xs, ys in zip(x.split(4096), y.split(4096))])
    meta = {
        "prior/explained_variance_mean": float(evr.mean()), "prior/explained_variance_min": float(evr.min()),
        "prior/explained_variance_max": float(evr.max()), "prior/ae_recon_loss": float(prior.loss_history[-1]),
        "prior/ae_recon_loss_first": float(prior.loss_history[0]),
        "prior/support_points": int(len(y)),
        "prior/support_log_density_mean": float(own.mean()),
        "prior/bandwidth_mean": float(prior.kde.bandwidth_.float().mean()),
        "prior/ae_epochs": len(prior.loss_history),
    }
    if prior.val_loss_history:  # held-out support points: the kept epoch and its held-out loss
        meta["prior/ae_best_epoch"] = int(prior.best_epoch)
        meta["prior/ae_val_loss"] = float(prior.val_loss_history[prior.best_epoch])
    log.info("prior: PCA keeps %.1f%% of the variance (mean over classes); AE loss %.4f -> %.4f (fitted on %s)",
             100 * meta["prior/explained_variance_mean"], meta["prior/ae_recon_loss_first"],
             meta["prior/ae_recon_loss"], device)
    return prior.cpu(), meta


def load_prior(ctx: RunContext, key: str) -> tuple[ClassPrior, dict]:
    prior = empty_prior(ctx.datamodule.num_classes, ctx.cfg.prior)
    prior.load_state_dict(load_torch(ctx.store.path("prior", key) / "prior.pt"))
    return prior.freeze(), ctx.store.read_meta("prior", key)


def fit_or_load(ctx: RunContext) -> tuple[ClassPrior, dict]:
    """The fitted prior (CPU) and its metrics: from the store, or fitted by rank 0 and read by the others."""
    key = prior_key(ctx)

    def fit_and_store(fkey: str, art) -> tuple[ClassPrior, dict]:
        prior, meta = fit_prior(ctx, fkey)
        save_torch(prior.state_dict(), art.dir / "prior.pt")
        art.commit(meta)
        return prior, meta

    with distributed.claim(ctx.store, "prior", key) as art:
        if art.done:
            log.info("prior: reusing fitted prior %s", art.dir)
        else:
            fkey = ensure_features(ctx)
            fitted = distributed.run_on_rank_zero(lambda: fit_and_store(fkey, art))
            if fitted is not None:  # rank 0 (the others read it back below, once it is committed)
                return fitted
    return load_prior(ctx, key)


def run(ctx: RunContext) -> dict[str, float]:
    prior, metrics = fit_or_load(ctx)
    ctx.priors[ctx.target_model] = prior
    if distributed.is_rank_zero():
        metrics = {**metrics, **ctx.store.read_meta("features", features_key(ctx)).get("bad_files", {})}
        ctx.log_metrics(metrics)
    return metrics
