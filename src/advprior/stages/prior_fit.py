"""Stage ``prior``: fit the paper's class-conditional prior p(r|y,x) on the target model's support features.

fc6 features of ``data.support_per_class`` training images per class (cached, resumable) -> per-class PCA ->
per-class autoencoders (one batched LightningModule) -> per-class Gaussian KDE. Both cached in the store
(``features``, ``prior``), keyed as ``FEATURES_KEY`` and ``PRIOR_KEY`` declare.
"""
from __future__ import annotations

import logging
import shutil

import torch

from ..context import RunContext
from ..keys import AFFECTS, COMMON, CONTENT, IGNORED, KeySpec, data_rules, not_read, register, stage_key
from ..prior import BatchedAutoencoder, ClassConditionalKDE, ClassPCA, ClassPrior, fit_class_prior
from ..prior.features import extract_features
from ..utils.io import load_torch, save_torch
from ..utils.progress import lightning_progress
from .attack_study import eval_batch_size

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
        ("prior.cv_folds", AFFECTS), ("prior.ae.*", AFFECTS),
        ("prior.*", IGNORED),  # feature_layer, support_per_class: through the features; weight, top_k: the defense
        ("seed", AFFECTS),  # autoencoder init and batches, KDE cross-validation folds
        ("trainer.*", IGNORED),  # the autoencoders train on their own CPU Trainer
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
    return ClassPrior(
        ClassPCA(int(pcfg.n_components)),
        BatchedAutoencoder(num_classes, int(pcfg.n_components), int(pcfg.bottleneck), pcfg.get("depth"),
                           float(pcfg.negative_slope)),
        ClassConditionalKDE(),
    )


def load_support_features(ctx: RunContext) -> dict[str, torch.Tensor]:
    cfg, dm = ctx.cfg, ctx.datamodule
    with ctx.store.claim("features", features_key(ctx)) as art:
        if art.done:
            return load_torch(art.dir / "features.pt")
        feats = extract_features(
            ctx.models[ctx.target_model], dm.support_dataset(support_per_class(ctx)), cfg.prior.feature_layer,
            art.dir / "shards", batch_size=eval_batch_size(cfg),
            shard_size=int(cfg.prior.shard_size), num_workers=int(cfg.data.get("num_workers", 0)),
        )
        save_torch(feats, art.dir / "features.pt")
        shutil.rmtree(art.dir / "shards")  # features.pt holds every shard: keep (and checksum) one copy
        art.commit({"n": len(feats["labels"]), "dim": feats["features"].shape[1]})
        return feats


def fit_or_load(ctx: RunContext) -> tuple[ClassPrior, dict]:
    with ctx.store.claim("prior", prior_key(ctx)) as art:
        if art.done:
            log.info("prior: reusing fitted prior %s", art.dir)
            prior = empty_prior(ctx.datamodule.num_classes, ctx.cfg.prior)
            prior.load_state_dict(load_torch(art.dir / "prior.pt"))
            return prior.freeze(), art.meta
        prior, meta = fit_prior(ctx)
        save_torch(prior.state_dict(), art.dir / "prior.pt")
        art.commit(meta)
    log.info("prior: PCA keeps %.1f%% of the variance (mean over classes); AE loss %.4f -> %.4f",
             100 * meta["prior/explained_variance_mean"], meta["prior/ae_recon_loss_first"], meta["prior/ae_recon_loss"])
    return prior, meta


def fit_prior(ctx: RunContext) -> tuple[ClassPrior, dict]:
    """Fit the prior on the support features (cached) and describe it (the stage's metrics)."""
    cfg, pcfg = ctx.cfg, ctx.cfg.prior
    num_classes = ctx.datamodule.num_classes
    feats = load_support_features(ctx)
    bw = pcfg.bandwidth
    prior = fit_class_prior(
        feats["features"], feats["labels"], num_classes,
        n_components=int(pcfg.n_components), bottleneck=int(pcfg.bottleneck), depth=pcfg.get("depth"),
        negative_slope=float(pcfg.negative_slope), bandwidth=float(bw) if isinstance(bw, (int, float)) else str(bw),
        kernel_cov=str(pcfg.kernel_cov), cv_folds=int(pcfg.cv_folds), epochs=int(pcfg.ae.epochs),
        batch_size=int(pcfg.ae.batch_size), lr=float(pcfg.ae.lr), seed=int(cfg.seed),
        # the run's loggers get the per-epoch prior/ae_recon_loss curve
        trainer_kwargs={"logger": list(ctx.loggers.values()) or False, "log_every_n_steps": 1,
                        **lightning_progress(ctx.cfg.trainer.get("enable_progress_bar", True))},
    )
    evr = prior.pca.explained_variance_ratio_.sum(1)
    with torch.no_grad():
        own = prior(feats["features"]).gather(1, feats["labels"][:, None]).squeeze(1)
    meta = {
        "prior/explained_variance_mean": float(evr.mean()), "prior/explained_variance_min": float(evr.min()),
        "prior/explained_variance_max": float(evr.max()), "prior/ae_recon_loss": float(prior.loss_history[-1]),
        "prior/ae_recon_loss_first": float(prior.loss_history[0]),
        "prior/support_points": int(len(feats["labels"])),
        "prior/support_log_density_mean": float(own.mean()),
        "prior/bandwidth_mean": float(prior.kde.bandwidth_.float().mean()),
    }
    return prior, meta


def run(ctx: RunContext) -> dict[str, float]:
    prior, metrics = fit_or_load(ctx)
    ctx.priors[ctx.target_model] = prior
    ctx.log_metrics(metrics)
    return metrics
