"""Stage ``prior``: fit the paper's class-conditional prior p(r|y,x) on the target model's support features.

fc6 features of ``data.support_per_class`` training images per class (cached, resumable) -> per-class PCA ->
per-class autoencoders (one batched LightningModule) -> per-class Gaussian KDE (or, ``prior.space=shared``,
one PCA and autoencoder for all classes and a class-conditional KDE). Cached by config hash.
"""
from __future__ import annotations

import logging

import torch
from omegaconf import OmegaConf

from ..context import RunContext
from ..prior import BatchedAutoencoder, ClassConditionalKDE, ClassPCA, ClassPrior, fit_class_prior
from ..prior.class_prior import SPACES
from ..prior.features import extract_features
from ..store import config_without
from ..utils.io import load_torch, save_torch
from .train import model_identity

log = logging.getLogger(__name__)

STAGE_VERSION = 1
FIT_KEYS = ("feature_layer", "n_components", "bottleneck", "depth", "negative_slope", "bandwidth",
            "kernel_cov", "cv_folds", "ae", "space", "standardize", "val_fraction")


def check_prior_config(pcfg) -> None:
    """The prior's new options (space, standardize, val_fraction, bandwidth, ae.patience) -> ConfigError."""
    from ..validation import ConfigError

    space = pcfg.get("space", "per_class")
    if space not in SPACES:
        raise ConfigError(f"prior.space must be one of {SPACES}, got {space!r}")
    if not isinstance(pcfg.get("standardize", False), bool):
        raise ConfigError(f"prior.standardize must be true or false, got {pcfg.get('standardize')!r}")
    vf = pcfg.get("val_fraction", 0.0)
    if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 <= vf < 1:
        raise ConfigError(f"prior.val_fraction must be a number in [0, 1), got {vf!r}")
    patience = pcfg.ae.get("patience")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ConfigError(f"prior.ae.patience must be null or an int >= 1, got {patience!r}")
    md = pcfg.ae.get("min_delta", 0.0)
    if isinstance(md, bool) or not isinstance(md, (int, float)) or not md >= 0:
        raise ConfigError(f"prior.ae.min_delta must be a number >= 0, got {md!r}")
    for what, needs in (("prior.bandwidth=heldout", pcfg.get("bandwidth") == "heldout"),
                        (f"prior.ae.patience={patience} (early stopping)", patience is not None)):
        if needs and not vf:
            raise ConfigError(f"{what} needs held-out support points: set prior.val_fraction > 0 (e.g. 0.2)")


def support_per_class(ctx: RunContext) -> int | None:
    v = ctx.cfg.prior.get("support_per_class")
    return int(v) if v is not None else ctx.cfg.data.get("support_per_class")


def features_key(ctx: RunContext) -> str:
    cfg = ctx.cfg
    data = config_without(cfg.data, ("num_workers", "batch_size", "eval_batch_size", "eval_subset", "val_subset",
                                     "pin_memory"))
    return ctx.store.key("features", {"model": model_identity(ctx, ctx.target_model), "data": data,
                                      "per_class": support_per_class(ctx), "layer": cfg.prior.feature_layer,
                                      "version": STAGE_VERSION})


def prior_key(ctx: RunContext) -> str:
    p = OmegaConf.to_container(ctx.cfg.prior, resolve=True)
    return ctx.store.key("prior", {"features": features_key(ctx), "fit": {k: p.get(k) for k in FIT_KEYS},
                                   "seed": int(ctx.cfg.seed), "version": STAGE_VERSION})


def empty_prior(num_classes: int, pcfg) -> ClassPrior:
    """An unfitted ClassPrior of the configured shape, ready for ``load_state_dict``."""
    space = str(pcfg.get("space", "per_class"))
    return ClassPrior(
        ClassPCA(int(pcfg.n_components)),
        BatchedAutoencoder(num_classes if space == "per_class" else 1, int(pcfg.n_components),
                           int(pcfg.bottleneck), pcfg.get("depth"), float(pcfg.negative_slope)),
        ClassConditionalKDE(), space=space, num_classes=num_classes,
    )


def load_support_features(ctx: RunContext) -> dict[str, torch.Tensor]:
    cfg, dm = ctx.cfg, ctx.datamodule
    key = features_key(ctx)
    out = ctx.store.path("features", key)
    if ctx.store.is_done("features", key):
        return load_torch(out / "features.pt")
    feats = extract_features(
        ctx.models[ctx.target_model], dm.support_dataset(support_per_class(ctx)), cfg.prior.feature_layer,
        out / "shards", batch_size=int(cfg.data.get("eval_batch_size") or cfg.data.batch_size),
        shard_size=int(cfg.prior.shard_size), num_workers=int(cfg.data.get("num_workers", 0)),
    )
    save_torch(feats, out / "features.pt")
    ctx.store.mark_done("features", key, meta={"n": len(feats["labels"]), "dim": feats["features"].shape[1]})
    return feats


def fit_or_load(ctx: RunContext) -> tuple[ClassPrior, dict]:
    cfg, pcfg = ctx.cfg, ctx.cfg.prior
    key = prior_key(ctx)
    out = ctx.store.path("prior", key)
    num_classes = ctx.datamodule.num_classes
    if ctx.store.is_done("prior", key):
        log.info("prior: reusing fitted prior %s", out)
        prior = empty_prior(num_classes, pcfg)
        prior.load_state_dict(load_torch(out / "prior.pt"))
        return prior.freeze(), ctx.store.read_meta("prior", key)
    feats = load_support_features(ctx)
    bw = pcfg.bandwidth
    prior = fit_class_prior(
        feats["features"], feats["labels"], num_classes,
        n_components=int(pcfg.n_components), bottleneck=int(pcfg.bottleneck), depth=pcfg.get("depth"),
        negative_slope=float(pcfg.negative_slope), bandwidth=float(bw) if isinstance(bw, (int, float)) else str(bw),
        kernel_cov=str(pcfg.kernel_cov), cv_folds=int(pcfg.cv_folds), epochs=int(pcfg.ae.epochs),
        batch_size=int(pcfg.ae.batch_size), lr=float(pcfg.ae.lr), seed=int(cfg.seed),
        space=str(pcfg.space), standardize=bool(pcfg.standardize), val_fraction=float(pcfg.val_fraction),
        patience=None if pcfg.ae.get("patience") is None else int(pcfg.ae.patience),
        min_delta=float(pcfg.ae.get("min_delta") or 0.0),
        # the run's loggers get the per-epoch prior/ae_recon_loss curve
        trainer_kwargs={"logger": list(ctx.loggers.values()) or False, "log_every_n_steps": 1},
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
        "prior/ae_epochs": len(prior.loss_history),
    }
    if prior.val_loss_history:  # held-out support points: the kept epoch and its held-out loss
        meta["prior/ae_best_epoch"] = int(prior.best_epoch)
        meta["prior/ae_val_loss"] = float(prior.val_loss_history[prior.best_epoch])
    save_torch(prior.state_dict(), out / "prior.pt")
    ctx.store.mark_done("prior", key, meta=meta)
    log.info("prior: PCA keeps %.1f%% of the variance (mean over classes); AE loss %.4f -> %.4f",
             100 * meta["prior/explained_variance_mean"], meta["prior/ae_recon_loss_first"], meta["prior/ae_recon_loss"])
    return prior, meta


def run(ctx: RunContext) -> dict[str, float]:
    prior, metrics = fit_or_load(ctx)
    ctx.priors[ctx.target_model] = prior
    ctx.log_metrics(metrics)
    return metrics
