"""Stage ``defense``: judge the Bayesian prior (paper section 6-7) honestly.

On the eval images, for every eps: the base model and the posterior on clean images, on FGSM examples
crafted against the base model (non-adaptive, the paper's setting), and on attacks crafted through the
posterior itself (white-box adaptive: FGSM and PGD with restarts on the joint scores, margin loss by
default; a detector-aware PGD that also raises log p(r|y_adv,x)). Adaptive accuracies sit next to the
non-adaptive ones; the adaptive PGD columns are per-image worst cases over {non-adaptive, adaptive}
example, so they can never exceed the non-adaptive accuracy. Rates get Wilson 95% intervals (good coverage
on the small high-confidence subsets); the prior's log density is also scored as a detector of adversarial
inputs (ROC-AUC), under plain FGSM and under the detector-aware attack. The per-image work
(``defense_batch``) runs as a Lightning loop (``advprior.loops``) in resumable shards of
``defense.shard_size`` images split over the ranks; rank 0 alone summarizes.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import binary_auroc

from .. import distributed
from ..analysis.intervals import rate_interval
from ..analysis.rates import format_eps
from ..attacks import FGSM, PGD, DetectorAwarePGD, FGSMSweep
from ..context import RunContext
from ..keys import AFFECTS, COMMON, IGNORED, KeySpec, data_rules, not_read, register, stage_key
from ..loops import Table, bad_file_metrics, stage_loop, stage_models
from ..prior import BayesianPriorClassifier
from ..store import link_into
from ..utils.io import save_csv
from ..utils.loggers import log_figure, log_table
from . import prior_fit  # the prior's KeySpec is an input of the defense's
from .attack_study import epsilons, use_true_labels

log = logging.getLogger(__name__)


def defended_model(ctx: RunContext, base: torch.nn.Module | None = None) -> BayesianPriorClassifier:
    """The posterior classifier around ``base`` (default: the target model) with the target's prior."""
    p = ctx.cfg.prior
    return BayesianPriorClassifier(base if base is not None else ctx.models[ctx.target_model],
                                   ctx.priors[ctx.target_model],
                                   feature_layer=p.feature_layer, weight=float(p.weight),
                                   top_k=None if p.get("top_k") is None else int(p.top_k)).eval()


def _pred_prob(log_probs: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return log_probs.gather(1, cls[:, None]).squeeze(1).exp()


def _at(values: torch.Tensor, cls: torch.Tensor) -> np.ndarray:
    """``values[b, cls[b]]`` as a numpy array."""
    return values.gather(1, cls[:, None]).squeeze(1).cpu().numpy()


def pgd_seeds(seed: int, idx: torch.Tensor) -> torch.Tensor:
    """(B, 2) per-image seeds ``[seed, dataset index]`` of the PGD random starts: an image's start depends on
    the run seed, its index and the restart only, not on the eval batch size, its batch or the process."""
    idx = torch.as_tensor(idx, dtype=torch.long).cpu()
    return torch.stack([torch.full_like(idx, int(seed)), idx], 1)


def defense_batch(
    base: torch.nn.Module,
    defended: BayesianPriorClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    eps_list: list[float],
    dcfg,
    target: torch.Tensor | None,
    seed: int,
) -> pd.DataFrame:
    """One row per (eps, image) of one batch: base and posterior predictions clean, under FGSM crafted on
    the base model (non-adaptive), and under the adaptive attacks crafted through the posterior's joint
    scores (``target``: the labels attacked, None for the model's own predictions).

    Adaptive PGD columns are worst cases per image over {the non-adaptive FGSM example, the PGD example}
    (the PGD example where it is misclassified, else the FGSM one), so ``adaptive_pgd_post_pred`` is wrong
    whenever ``post_adv_pred`` is: adaptive accuracy <= non-adaptive accuracy for any weights;
    ``adaptive_pgd_only_post_pred`` is PGD alone. ``pgd_base_pred`` likewise for the base model. PGD random
    starts are seeded per image by ``pgd_seeds(seed, idx)``.
    """
    acfg = dcfg.adaptive
    pgd_cfg, det_cfg = acfg.pgd, acfg.detector_aware
    joint = defended.with_output("joint")  # attacks see unnormalized scores (no saturated log_softmax)
    seeds = pgd_seeds(seed, idx) if pgd_cfg.random_start else None
    with torch.no_grad():
        comp = defended.components(x)
    clean_pred = comp["log_likelihood"].argmax(1)
    post_clean = comp["log_posterior"].argmax(1)
    sweep = FGSMSweep(base, eps_list).sweep(x, target)
    rows = []
    for k, eps in enumerate(eps_list):
        adv = sweep.adv_images(k)
        with torch.no_grad():
            ca = defended.components(adv)
        adv_pred = ca["log_likelihood"].argmax(1)
        post_adv = ca["log_posterior"].argmax(1)
        row = {
            "eps": np.full(len(y), eps), "index": idx.cpu().numpy(), "label": y.cpu().numpy(),
            "base_clean_pred": clean_pred.cpu().numpy(), "post_clean_pred": post_clean.cpu().numpy(),
            "base_adv_pred": adv_pred.cpu().numpy(),
            "base_adv_prob": _pred_prob(ca["log_likelihood"], adv_pred).cpu().numpy(),
            "post_adv_pred": post_adv.cpu().numpy(),
            "post_prob_of_adv_label": _pred_prob(ca["log_posterior"], adv_pred).cpu().numpy(),
            "clean_score": _at(comp["log_prior"], clean_pred),
            "adv_score": _at(ca["log_prior"], adv_pred),
            "post_clean_score": _at(comp["log_prior"], post_clean),
        }
        if acfg.fgsm:
            a_fgsm = FGSM(joint, eps, loss=acfg.loss)(x, target)
            with torch.no_grad():
                row["adaptive_fgsm_post_pred"] = joint(a_fgsm).argmax(1).cpu().numpy()
        if pgd_cfg.steps:
            def attack(cls, model, **kw):  # noqa: ANN001, ANN003, ANN202
                """``cls`` at this eps with the configured PGD settings and this batch's per-image seeds."""
                if eps == 0:
                    return x
                return cls(model, eps, eps * float(pgd_cfg.alpha_factor), int(pgd_cfg.steps),
                           random_start=bool(pgd_cfg.random_start), restarts=int(pgd_cfg.restarts),
                           schedule=str(pgd_cfg.schedule), **kw)(x, target, seeds=seeds)
            with torch.no_grad():  # early_stop: an image fooled at any iterate counts (robust accuracy)
                a_pred = joint(attack(PGD, joint, loss=pgd_cfg.loss, early_stop=True)).argmax(1)
                b_pred = base(attack(PGD, base, loss=pgd_cfg.loss, early_stop=True)).argmax(1)
            row["adaptive_pgd_only_post_pred"] = a_pred.cpu().numpy()
            row["adaptive_pgd_post_pred"] = torch.where(a_pred != y, a_pred, post_adv).cpu().numpy()
            row["pgd_base_pred"] = torch.where(b_pred != y, b_pred, adv_pred).cpu().numpy()
            if det_cfg.enabled:
                with torch.no_grad():
                    cd = defended.components(attack(DetectorAwarePGD, defended, c=float(det_cfg.c)))
                d_pred = cd["log_posterior"].argmax(1)
                row["det_aware_post_pred"] = d_pred.cpu().numpy()
                row["det_aware_score"] = _at(cd["log_prior"], d_pred)
        rows.append(pd.DataFrame(row))
    return pd.concat(rows, ignore_index=True)


class DefenseStep:
    """``step(x, y, idx) -> {"outcomes": defense_batch(...)}``: the Lightning loop's view of ``defense_batch``."""

    def __init__(self, base: torch.nn.Module, defended: BayesianPriorClassifier, eps_list: list[float], dcfg,
                 true_labels: bool, seed: int) -> None:
        self.base, self.defended, self.eps_list, self.dcfg = base, defended, eps_list, dcfg
        self.true_labels, self.seed = true_labels, seed

    def __call__(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, pd.DataFrame]:
        target = y if self.true_labels else None  # the same labels as the attack study
        return {"outcomes": defense_batch(self.base, self.defended, x, y, idx, self.eps_list, self.dcfg, target,
                                          self.seed)}


DEFENSE_TABLES = (Table("outcomes", sort_by=("eps", "index")),)


def evaluate_defense(ctx: RunContext, out: Path) -> list[int] | None:
    """One row per (eps, image) over the evaluation images into ``out/outcomes.parquet``: ``defense_batch``
    per batch in a Lightning loop (resumable pieces, split over ranks; every rank calls this). Rank 0 gets
    the skipped positions."""
    cfg = ctx.cfg
    base = stage_models({"base": ctx.models[ctx.target_model]}, cfg.trainer.precision)["base"]
    defended = defended_model(ctx, base)
    step = DefenseStep(base, defended, epsilons(cfg), cfg.defense, use_true_labels(cfg), int(cfg.seed))
    result = stage_loop(ctx, "defense", ctx.datamodule.eval_dataset(), step, {"defended": defended},
                        DEFENSE_TABLES, out, shard_size=int(cfg.defense.shard_size), grad=True)
    return result.skipped if result is not None else None


def defense_summary(df: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per eps: accuracies, mitigation and recovery rates (Wilson 95% intervals) and the detector's ROC-AUC.

    mitigation_rate: among images whose FGSM example changed the base label with base probability
    > threshold (high-confidence adversarial examples), the share whose posterior top-1 is not the
    adversarial label. recovery_rate: the share (same subset) whose posterior top-1 is the true label.
    detector_auc: ROC-AUC of -log p(r | y_hat, x) separating successful adversarial examples (label changed)
    from the clean images, where y_hat is the base model's prediction for that input.
    Adaptive columns (white box through the posterior): adaptive_fgsm_post_acc; adaptive_pgd_post_acc (worst
    case per image over the FGSM example and the PGD one, so <= post_adv_acc), adaptive_pgd_only_post_acc,
    pgd_base_acc (the base model, same worst case); adaptive_det_post_acc and detector_auc_adaptive: the
    detector-aware PGD, scored by the same detector at the label the defended model reports
    (-log p(r | posterior top-1, x), clean images against the examples whose posterior label changed).
    """
    out = []
    for eps, g in df.groupby("eps", sort=True):
        rec: dict[str, float] = {"eps": eps, "eps_255": eps * 255, "n": len(g)}

        def ci(name: str, values) -> None:
            r = rate_interval(np.asarray(values, dtype=bool))  # every column here is a rate
            rec[name], rec[f"{name}_low"], rec[f"{name}_high"] = r.estimate, r.low, r.high

        y = g["label"].to_numpy()
        ci("base_clean_acc", g["base_clean_pred"].to_numpy() == y)
        ci("post_clean_acc", g["post_clean_pred"].to_numpy() == y)
        ci("base_adv_acc", g["base_adv_pred"].to_numpy() == y)
        ci("post_adv_acc", g["post_adv_pred"].to_numpy() == y)
        changed = g["base_adv_pred"].to_numpy() != g["base_clean_pred"].to_numpy()
        high = changed & (g["base_adv_prob"].to_numpy() > threshold)
        rec["n_high_conf"] = int(high.sum())
        ci("mitigation_rate", g["post_adv_pred"].to_numpy()[high] != g["base_adv_pred"].to_numpy()[high])
        ci("recovery_rate", g["post_adv_pred"].to_numpy()[high] == y[high])
        if "adaptive_fgsm_post_pred" in g:
            ci("adaptive_fgsm_post_acc", g["adaptive_fgsm_post_pred"].to_numpy() == y)
        if "adaptive_pgd_post_pred" in g:
            ci("adaptive_pgd_post_acc", g["adaptive_pgd_post_pred"].to_numpy() == y)
            ci("adaptive_pgd_only_post_acc", g["adaptive_pgd_only_post_pred"].to_numpy() == y)
            ci("pgd_base_acc", g["pgd_base_pred"].to_numpy() == y)
        if "det_aware_post_pred" in g:
            ci("adaptive_det_post_acc", g["det_aware_post_pred"].to_numpy() == y)
        rec["n_detector_adv"] = int(changed.sum())
        rec["detector_auc"] = detector_auc(g["clean_score"].to_numpy(), g["adv_score"].to_numpy(), changed)
        if "det_aware_post_pred" in g:
            fooled = g["det_aware_post_pred"].to_numpy() != g["post_clean_pred"].to_numpy()
            rec["n_detector_adv_adaptive"] = int(fooled.sum())
            rec["detector_auc_adaptive"] = detector_auc(g["post_clean_score"].to_numpy(),
                                                        g["det_aware_score"].to_numpy(), fooled)
        out.append(rec)
    return _adaptive_beside_non_adaptive(pd.DataFrame(out))


#: Summary column order: every adaptive number right after the non-adaptive one it is judged against.
SUMMARY_ORDER = ("eps", "eps_255", "n", "base_clean_acc", "post_clean_acc", "base_adv_acc", "post_adv_acc",
                 "adaptive_fgsm_post_acc", "adaptive_pgd_post_acc", "adaptive_pgd_only_post_acc",
                 "adaptive_det_post_acc", "pgd_base_acc", "detector_auc", "detector_auc_adaptive",
                 "n_detector_adv", "n_detector_adv_adaptive")


def _adaptive_beside_non_adaptive(summary: pd.DataFrame) -> pd.DataFrame:
    """Columns in ``SUMMARY_ORDER`` (each with its ``_low``/``_high``) first, the others after, in their order."""
    first = [c for name in SUMMARY_ORDER for c in (name, f"{name}_low", f"{name}_high") if c in summary]
    return summary[first + [c for c in summary.columns if c not in first]]


def detector_auc(clean_score: np.ndarray, adv_score: np.ndarray, changed: np.ndarray) -> float:
    """ROC-AUC of ``-score`` (low prior density = flagged) separating every clean image (negatives) from the
    adversarial examples with ``changed`` labels (positives); NaN when none changed."""
    if not changed.any():
        return float("nan")
    scores = np.concatenate([-clean_score, -adv_score[changed]])
    target = np.concatenate([np.zeros(len(clean_score)), np.ones(int(changed.sum()))])
    scores = np.nan_to_num(scores, nan=0.0, posinf=1e30, neginf=-1e30)
    return float(binary_auroc(torch.tensor(scores), torch.tensor(target, dtype=torch.long)))


def panel_images(ctx: RunContext, df: pd.DataFrame, n: int) -> tuple[list[torch.Tensor], list[str]]:
    """The paper's Figures 10-12: high-confidence FGSM examples with the base and posterior probability of
    the adversarial label (first ``n`` by index at ``attack.figure_eps``)."""
    cfg = ctx.cfg
    eps = float(cfg.attack.figure_eps) / float(cfg.attack.scale)
    sub = df[np.isclose(df["eps"], eps) & (df["base_adv_pred"] != df["base_clean_pred"])
             & (df["base_adv_prob"] > float(cfg.attack.high_conf_threshold))].head(n)
    names = getattr(ctx.datamodule, "class_names", None) or [str(i) for i in range(ctx.datamodule.num_classes)]
    ds, attack = ctx.datamodule.eval_dataset(), FGSM(ctx.models[ctx.target_model], eps)
    images, titles = [], []
    for _, r in sub.iterrows():
        x, y, _ = ds[int(r["index"])]
        images.append(attack(x[None], torch.tensor([y]) if use_true_labels(cfg) else None)[0])
        verdict = "kept" if r.post_adv_pred == r.base_adv_pred else f"-> {names[int(r.post_adv_pred)]}"
        titles.append(f"true {names[int(r.label)]}; adv {names[int(r.base_adv_pred)]}\n"
                      f"base p={r.base_adv_prob:.2f}, posterior p={r.post_prob_of_adv_label:.2f} ({verdict})")
    return images, titles


DEFENSE_KEY = register(KeySpec(
    "defense", inputs=("prior",),
    code=("stages/defense.py", "prior/posterior.py", "attacks/", "data/"),
    content=lambda ctx, model: ctx.datamodule.identity("eval"),
    rules=(
        ("attack.epsilons", AFFECTS), ("attack.scale", AFFECTS), ("attack.labels", AFFECTS),
        ("attack.*", IGNORED),  # high_conf_threshold, figure_eps: applied at summary time; the rest: the study
        ("prior.weight", AFFECTS), ("prior.top_k", AFFECTS),
        ("prior.*", IGNORED),  # the fitted prior enters through its key
        ("defense.adaptive.*", AFFECTS),
        ("defense.panels", IGNORED), ("defense.shard_size", IGNORED),  # a figure; resumable chunks of the same rows
        ("seed", AFFECTS),  # PGD's random start
        ("trainer.accelerator", AFFECTS), ("trainer.precision", AFFECTS),  # numerics of every forward pass
        ("compute.channels_last", AFFECTS),
        ("trainer.*", IGNORED),
        # the random starts are seeded per image (pgd_seeds), but PGD's sub-batches (restarts, early stop) are
        # cut from each batch, so the batch size stays in the key
        *data_rules(affects=("batch_size", "eval_batch_size")),
        ("target_model", AFFECTS),  # the base model (its identity enters through the prior's key)
        ("model.*", IGNORED),
        *not_read("fooling", "activations"),
        *COMMON,
    ),
))


def defense_key(ctx: RunContext) -> str:
    """What the per-image defense results depend on: ``DEFENSE_KEY``'s settings, the evaluation images and
    the prior's key (and through it the features, the target model and its data)."""
    return stage_key(ctx, DEFENSE_KEY)


def run(ctx: RunContext) -> dict[str, float]:
    """Evaluate (every rank) unless stored, then summarize on rank 0 (the other ranks return {})."""
    if ctx.target_model not in ctx.priors:
        prior_fit.run(ctx)
    with distributed.claim(ctx.store, "defense", defense_key(ctx)) as art:
        if art.done:
            log.info("defense: reusing per-image results %s", art.dir)
        else:
            skipped = evaluate_defense(ctx, art.dir)
            art.commit({"bad_files": bad_file_metrics(ctx.datamodule.eval_dataset(), "eval", skipped)}
                       if distributed.is_rank_zero() else {})
    if not distributed.is_rank_zero():
        return {}
    with distributed.alone():
        return summarize(ctx, art)


def summarize(ctx: RunContext, art) -> dict[str, float]:
    """Rank 0: the summary table, metrics, panels and W&B tables from the stored per-image results."""
    from ..report.figures import defense_panels, save_figure

    cfg, dcfg = ctx.cfg, ctx.cfg.defense
    df = pd.read_parquet(art.dir / "outcomes.parquet")
    ddir = ctx.run_dir / "defense"
    link_into(art.dir / "outcomes.parquet", ddir / "outcomes.parquet")
    summary = defense_summary(df, float(cfg.attack.high_conf_threshold))
    space = str(cfg.prior.get("space", "per_class"))
    summary["prior_space"] = space  # p(r|y,x) in per-class coordinates is not calibrated across classes
    if space == "per_class":
        log.info("defense: the prior scores each class in its own PCA/autoencoder coordinates, so p(r|y,x) "
                 "of different classes are not calibrated against each other (prior.space=shared is)")
    save_csv(summary, ddir / "summary.csv")
    metrics: dict[str, float] = {}
    skip = {"eps", "eps_255", "prior_space"}
    for _, r in summary.iterrows():
        for col, v in r.items():
            if col not in skip and not col.endswith(("_low", "_high")):
                metrics[f"defense/eps={format_eps(r.eps)}/{col}"] = float(v)
    fig = defense_panels(*panel_images(ctx, df, int(dcfg.panels)))
    log_figure(ctx, "defense/panels", save_figure(fig, ctx.run_dir / "figures" / "defense_panels.png"))
    log_table(ctx, "defense/summary", summary)
    metrics.update(ctx.store.read_meta("defense", art.key).get("bad_files", {}))
    ctx.log_metrics(metrics)
    return metrics
