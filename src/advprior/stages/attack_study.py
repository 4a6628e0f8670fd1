"""Stage ``attack``: the FGSM study (paper sections 4.1, 4.3, 4.4 and 7) on every configured model.

Writes to the store (keyed by models, data, attack config and numerics): ``outcomes.parquet`` (one row per
model, eps and image) and ``transfer.parquet``; the evaluation is a Lightning loop (``advprior.loops``) over
shards of ``attack.shard_size`` images split over the ranks, so a killed run resumes at the first
unfinished shard. Into the run directory (rank 0): ``attack/`` tables (outcomes, summary with Wilson/BCa
intervals, category counts, transfer matrix, paired differences between models and between white-box and
transferred examples) and ``figures/``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .. import distributed
from ..analysis.compare import comparison_metrics, model_differences, transfer_gaps
from ..analysis.outcomes import derive_outcomes, read_outcomes, write_outcomes
from ..analysis.rates import attack_summary, category_counts, format_eps, metric_dict
from ..analysis.similarity import weight_similarity_close
from ..analysis.transfer import transfer_matrix
from ..attacks.lit_sweep import TABLES as ATTACK_TABLES
from ..attacks.lit_sweep import AttackStep
from ..context import RunContext
from ..keys import (AFFECTS, COMMON, IGNORED, TRAINER_FIT, TRAINER_OUTPUT, KeySpec, data_rules, not_read, register,
                    stage_key)
from ..loops import bad_file_metrics, stage_loop, stage_models
from ..store import link_into
from ..utils.io import save_csv
from ..utils.loggers import log_figure, log_table

log = logging.getLogger(__name__)

ATTACK_KEY = register(KeySpec(
    "attack", inputs=("models",),
    code=("stages/attack_study.py", "attacks/", "analysis/outcomes.py", "analysis/categories.py", "data/"),
    content=lambda ctx, model: ctx.datamodule.identity("eval"),
    rules=(
        ("attack.epsilons", AFFECTS), ("attack.scale", AFFECTS), ("attack.labels", AFFECTS),
        ("attack.transfer", AFFECTS),
        # recomputed from the stored columns at summary time (derive_outcomes), or summary/figure settings
        ("attack.high_conf_threshold", IGNORED), ("attack.refocus_min_prob", IGNORED),
        ("attack.conatural.*", IGNORED), ("attack.figure_eps", IGNORED), ("attack.n_boot", IGNORED),
        ("attack.grid_samples", IGNORED), ("attack.wandb_table_rows", IGNORED),
        ("attack.shard_size", IGNORED),  # resumable chunks of the same per-image rows
        # the table is the same on any number of devices (tested); fit-only and display settings
        *[(f"trainer.{k}", IGNORED) for k in TRAINER_OUTPUT + TRAINER_FIT + ("devices", "strategy", "num_nodes")],
        ("trainer.*", AFFECTS),  # accelerator, precision, limit_test_batches (a truncated table), ...
        ("compute.channels_last", AFFECTS),  # the loop's memory format: other kernels, other rounding
        ("model.*", IGNORED),  # the models enter through their identities
        ("seed", IGNORED),  # FGSM is deterministic; the split enters through data.seed
        *data_rules(),
        ("target_model", IGNORED),  # only chooses the summary's figures and conatural matrix
        *not_read("prior", "defense", "fooling", "activations"),
        *COMMON,
    ),
))


def epsilons(cfg) -> list[float]:
    """The study's eps list in [0,1] pixel units (config values divided by ``attack.scale``)."""
    scale = float(cfg.attack.scale)
    eps = [float(e) / scale for e in cfg.attack.epsilons]
    bad = [e for e in cfg.attack.epsilons if not 0 <= float(e) / scale <= 1]
    if bad:
        raise ValueError(f"attack.epsilons {bad} fall outside [0,1] after dividing by attack.scale={scale}")
    return eps


def eval_batch_size(cfg) -> int:
    """Images per evaluation batch: ``data.eval_batch_size``, else ``data.batch_size``."""
    return int(cfg.data.get("eval_batch_size") or cfg.data.batch_size)


def use_true_labels(cfg) -> bool:
    """``attack.labels``: ``true`` attacks the true labels (the paper), ``predicted`` the model's own."""
    v = cfg.attack.labels
    if v is True or str(v).lower() == "true":
        return True
    if str(v).lower() == "predicted":
        return False
    raise ValueError(f"attack.labels must be 'true' or 'predicted', got {v!r}")


def paper_eps(cfg) -> float:
    eps = epsilons(cfg)
    want = float(cfg.attack.figure_eps) / float(cfg.attack.scale)
    match = [e for e in eps if abs(e - want) < 1e-12]
    if not match:
        raise ValueError(f"attack.figure_eps={cfg.attack.figure_eps} is not in attack.epsilons={list(cfg.attack.epsilons)}")
    return match[0]


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer for the weight-similarity conatural matrix")
    return linears[-1]


def close_matrix(ctx: RunContext) -> torch.Tensor:
    """Conatural pairs: WordNet tree distance when the data has a hierarchy, else last-layer similarity."""
    dm, ccfg = ctx.datamodule, ctx.cfg.attack.conatural
    hierarchy = getattr(dm, "hierarchy", None)
    if hierarchy is not None:
        return hierarchy.close_matrix(int(ccfg.max_distance)).bool()
    return weight_similarity_close(last_linear(ctx.models[ctx.target_model]).weight.detach().cpu(),
                                   k=int(ccfg.nearest_k))


def study_key(ctx: RunContext) -> str:
    return stage_key(ctx, ATTACK_KEY)


def evaluate(ctx: RunContext, out: Path) -> list[int] | None:
    """The sweep as a Lightning loop over the evaluation images into ``out/{outcomes,transfer}.parquet``
    (resumable pieces, split over ranks; every rank calls this). Rank 0 gets the skipped positions.
    ``high_confidence`` and ``category`` are not stored: the summary derives them (``derive_outcomes``)."""
    cfg = ctx.cfg
    dataset = ctx.datamodule.eval_dataset()
    models = stage_models(ctx.models, cfg.trainer.precision)
    step = AttackStep(models, epsilons(cfg), use_true_labels=use_true_labels(cfg),
                      transfer=bool(cfg.attack.transfer), paths=getattr(dataset, "paths", None))
    result = stage_loop(ctx, "attack", dataset, step, models, ATTACK_TABLES, out,
                        shard_size=int(cfg.attack.shard_size), grad=True)
    return result.skipped if result is not None else None


def images_fn(ctx: RunContext, model_name: str, eps: float):
    """index -> (clean, adversarial) image pair for the grids (FGSM recomputed for that image)."""
    from ..attacks import FGSM
    dataset = ctx.datamodule.eval_dataset()
    attack = FGSM(ctx.models[model_name], eps)
    use_true = use_true_labels(ctx.cfg)

    def fn(index: int):
        x, y, _ = dataset[int(index)]
        x = x.unsqueeze(0)
        adv = attack(x, torch.tensor([y]) if use_true else None)
        return x[0], adv[0]
    return fn


def derived_outcomes(ctx: RunContext, outcomes: pd.DataFrame) -> pd.DataFrame:
    """The stored outcome table with ``high_confidence`` and ``category`` computed with the current
    ``attack.high_conf_threshold``, ``refocus_min_prob`` and ``conatural`` settings."""
    a = ctx.cfg.attack
    return derive_outcomes(outcomes, float(a.high_conf_threshold), close_matrix(ctx), float(a.refocus_min_prob))


def summarize(ctx: RunContext, outcomes: pd.DataFrame, transfer: pd.DataFrame) -> dict[str, float]:
    """Tables, figures and metrics from the stored outcomes; ``high_confidence`` and ``category`` are
    computed here with the current ``attack.high_conf_threshold``, ``refocus_min_prob`` and ``conatural``
    settings, and the full table is written to the run's ``attack/outcomes.parquet``."""
    from ..report import figures

    cfg, run = ctx.cfg, ctx.run_dir
    outcomes = derived_outcomes(ctx, outcomes)
    write_outcomes(outcomes, run / "attack" / "outcomes.parquet")
    n_boot, seed = int(cfg.attack.n_boot), int(cfg.seed)
    fig_eps = paper_eps(cfg)
    adir, fdir = run / "attack", run / "figures"
    metrics: dict[str, float] = {}
    summaries, counts = {}, []
    for name in cfg.model:
        df = outcomes[outcomes["model"] == name]
        summaries[name] = attack_summary(df, n_boot=n_boot, seed=seed)
        c = category_counts(df)
        c.insert(0, "model", name)
        counts.append(c.reset_index())
        metrics.update(metric_dict(summaries[name], prefix=f"attack/{name}"))
        hist = figures.confidence_histograms(df, eps=fig_eps)
        log_figure(ctx, f"attack/{name}/confidence_histograms", figures.save_figure(
            hist, fdir / f"attack_confidence_{name}.png"))
    summary = pd.concat([s.assign(model=n) for n, s in summaries.items()], ignore_index=True)
    summary = summary[["model"] + [c for c in summary.columns if c != "model"]]
    save_csv(summary, adir / "summary.csv")
    save_csv(pd.concat(counts, ignore_index=True), adir / "categories.csv")
    # paired differences on the same images: how the depth, dropout and transfer claims are judged
    paired = model_differences(outcomes, list(cfg.model), n_boot=n_boot, seed=seed)
    gaps = transfer_gaps(outcomes, transfer, n_boot=n_boot, seed=seed)
    save_csv(paired, adir / "paired.csv")
    save_csv(gaps, adir / "transfer_paired.csv")
    metrics.update(comparison_metrics(paired, gaps))

    target = ctx.target_model
    tdf = outcomes[(outcomes["model"] == target) & (outcomes["eps"] == fig_eps)]
    fn = images_fn(ctx, target, fig_eps)
    names = getattr(ctx.datamodule, "class_names", None)
    for cat in ("true", "refocused", "conatural", "benign"):
        fig = figures.category_grid(tdf, fn, cat, n=int(cfg.attack.grid_samples), class_names=names, eps=fig_eps)
        log_figure(ctx, f"attack/{target}/category_{cat}", figures.save_figure(fig, fdir / f"attack_category_{cat}.png"))
    if len(summaries) > 1:
        log_figure(ctx, "attack/rates_vs_eps", figures.save_figure(figures.rate_vs_eps(summaries), fdir / "attack_rates_vs_eps.png"))
    if len(transfer):
        mats = []
        for eps, g in transfer.groupby("eps", sort=True):
            res = {}
            for (src, tgt), gg in g.groupby(["source", "target"], sort=False):
                res[(src, tgt)] = {"labels": gg["label"].to_numpy(), "clean_preds": gg["clean_pred"].to_numpy(),
                                   "adv_pred": gg["adv_pred"].to_numpy(), "adv_conf": gg["adv_conf"].to_numpy()}
            m = transfer_matrix(res, n_boot=n_boot, seed=seed)
            m.insert(0, "eps", eps)
            mats.append(m)
        mat = pd.concat(mats, ignore_index=True)
        save_csv(mat, adir / "transfer.csv")
        at = mat[mat["eps"] == fig_eps]
        log_figure(ctx, "attack/transfer", figures.save_figure(figures.transfer_heatmap(at), fdir / "attack_transfer.png"))
        for _, r in at.iterrows():
            metrics[f"attack/transfer/{r.source}->{r.target}/eps={format_eps(fig_eps)}/fooling_rate"] = float(r.fooling_rate)
    rows = int(cfg.attack.wandb_table_rows)
    log_table(ctx, f"attack/{target}/outcomes", tdf.head(rows))
    log_table(ctx, "attack/summary", summary)
    log_table(ctx, "attack/paired", paired)
    return metrics


def run(ctx: RunContext) -> dict[str, float]:
    """Evaluate (every rank) unless stored, then summarize on rank 0 (the other ranks return {})."""
    with distributed.claim(ctx.store, "attack", study_key(ctx)) as art:
        if art.done:
            log.info("attack: reusing outcomes %s", art.dir)
        else:
            skipped = evaluate(ctx, art.dir)
            art.commit({"bad_files": bad_file_metrics(ctx.datamodule.eval_dataset(), "eval", skipped)}
                       if distributed.is_rank_zero() else {})
    if not distributed.is_rank_zero():
        return {}
    with distributed.alone():
        outcomes, transfer = read_outcomes(art.dir / "outcomes.parquet"), pd.read_parquet(art.dir / "transfer.parquet")
        link_into(art.dir / "transfer.parquet", ctx.run_dir / "attack" / "transfer_rows.parquet")
        metrics = summarize(ctx, outcomes, transfer)
        metrics.update(art.meta.get("bad_files", {}))
    ctx.log_metrics(metrics)
    return metrics
