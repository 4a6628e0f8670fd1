"""Stage ``activations``: where in the network the FGSM perturbation shows (paper section 5).

On the attack study's adversarial images (recomputed with ``FGSMSweep`` on the same shards and batches as
the study, so bit-identical to it where the backend is deterministic), for every model, eps and image:
the relative change ``||a_adv - a|| / ||a||`` at every named layer (``advprior.analysis.activations``).
For the target model's high-confidence examples of each category at the figure eps: the per-filter
difference at ``activations.layers`` and the heat map of the filter that changed most (Figures 7 and 8).

Store: ``activations/<activations_key>/layer_change.parquet`` (resumable by shard like the study) and
``activation_examples/<examples_key>/examples.pt``. Run directory: ``activations/layer_change.parquet`` (the
stored rows with the study's ``category`` and ``high_confidence``, derived with the current settings),
``layer_change.csv`` (means with 95% BCa intervals), ``examples.csv``; ``figures/activations_*.png``.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from .. import distributed
from ..analysis.activations import change_summary
from ..analysis.categories import ADVERSARIAL_CATEGORIES
from ..analysis.lit_activations import ActivationChangeModule, concat_examples, merge_rank_shards
from ..analysis.outcomes import read_outcomes
from ..analysis.rates import format_eps
from ..config.errors import fmt
from ..config.stages import ActivationsConfig
from ..config.validate import check_node
from ..context import RunContext
from ..keys import AFFECTS, COMMON, CONTENT, IGNORED, KeySpec, data_rules, not_read, register, stage_key
from ..utils.io import load_torch, save_csv, save_parquet, save_torch
from ..utils.loggers import log_figure, log_table
from ..validation import ConfigError
from . import attack_study
from .attack_study import epsilons, paper_eps, study_key, use_true_labels
from .train import make_trainer

log = logging.getLogger(__name__)

STUDY_COLUMNS = ["label_changed"]  # stored with the layer table
DERIVED_STUDY_COLUMNS = ["category", "high_confidence"]  # joined at summary time, with the current settings


@dataclass(frozen=True)
class Plan:
    """The resolved settings: eps values in [0,1] pixel units (the study's own floats), layers per model."""

    epsilons: list[float]
    figure_eps: float
    change_layers: dict[str, list[str]]
    map_layers: list[str]
    examples_per_category: int


def _match_eps(values, study: list[float], scale: float, key: str) -> list[float]:
    out = []
    for v in values:
        hit = [e for e in study if abs(e - float(v) / scale) < 1e-12]
        if not hit:
            raise ConfigError(f"{key}={fmt(v)} is not one of attack.epsilons {fmt([e * scale for e in study])}; "
                              f"the activations stage reuses the study's adversarial images")
        out.append(hit[0])
    return out


def _settings(cfg) -> tuple[ActivationsConfig, list[float]]:
    """The checked ``cfg.activations`` and its eps values in pixel units (the study's own floats)."""
    acfg = check_node(cfg.get("activations") or {}, ActivationsConfig, "activations")
    study = epsilons(cfg)
    if acfg.epsilons is None:
        return acfg, study
    return acfg, _match_eps(acfg.epsilons, study, float(cfg.attack.scale), "activations.epsilons")


def make_plan(ctx: RunContext) -> Plan:
    """Check ``cfg.activations`` against the study and the models (before any work) and resolve it."""
    cfg = ctx.cfg
    acfg, eps = _settings(cfg)
    study, scale = epsilons(cfg), float(cfg.attack.scale)
    fig_eps = paper_eps(cfg) if acfg.figure_eps is None else _match_eps(
        [acfg.figure_eps], study, scale, "activations.figure_eps")[0]
    change = {name: [n for n in (acfg.change_layers or m.layer_names) if n in m.layer_names]
              for name, m in ctx.models.items()}
    unknown = [n for n in acfg.change_layers or () if not any(n in v for v in change.values())]
    if unknown:
        raise ConfigError(f"activations.change_layers {unknown} are not named layers of any model: "
                          f"{ {name: m.layer_names for name, m in ctx.models.items()} } (null = every named layer)")
    n_ex = acfg.examples_per_category if acfg.layers else 0
    if n_ex and not spatial_layers(ctx):
        # e.g. a softmax regression as the target: nothing to draw, the layer-wise change still runs
        log.info("activations: the target model %r has no conv or pool layer (it has %s): no Figure 7/8 "
                 "examples", ctx.target_model, ctx.models[ctx.target_model].layer_names)
        n_ex = 0
    if n_ex:
        if fig_eps not in eps:
            raise ConfigError(f"the figure eps {fig_eps * scale:g} is not among activations.epsilons "
                              f"{[e * scale for e in eps]}; add it or set activations.figure_eps")
        check_map_layers(ctx, acfg.layers)
    return Plan(eps, fig_eps, change, list(acfg.layers) if n_ex else [], n_ex)


def spatial_layers(ctx: RunContext) -> list[str]:
    """The target model's named layers with spatial maps ``(B, F, h, w)`` (one forward of a zero image)."""
    model = ctx.models[ctx.target_model]
    param = next(model.parameters())
    with torch.no_grad():
        feats = model.features(torch.zeros(1, *ctx.datamodule.input_shape, device=param.device), model.layer_names)
    return [n for n in model.layer_names if feats[n].ndim == 4]


def check_map_layers(ctx: RunContext, layers: list[str]) -> None:
    """The heat-map layers must be conv or pool layers ``(B, F, h, w)`` of the target model."""
    name = ctx.target_model
    model = ctx.models[name]
    missing = [n for n in layers if n not in model.layer_names]
    if missing:
        raise ConfigError(f"activations.layers {missing} are not named layers of the target model {name!r} "
                          f"(it has {model.layer_names}); pick conv/pool layers or set activations.layers=[]")
    spatial = spatial_layers(ctx)
    flat = [n for n in layers if n not in spatial]
    if flat:
        raise ConfigError(f"activations.layers {flat} of model {name!r} have no spatial maps; heat maps need "
                          f"conv or pool layers: {spatial}")


ACTIVATIONS_KEY = register(KeySpec(
    "activations", inputs=("attack",),
    code=("stages/activations.py", "analysis/activations.py", "analysis/lit_activations.py", "attacks/"),
    content=lambda ctx, model: _settings(ctx.cfg)[1],  # the eps values in pixel units (null: the study's)
    rules=(
        ("activations.epsilons", CONTENT), ("activations.change_layers", AFFECTS),
        ("activations.*", IGNORED),  # the figure examples: ACTIVATION_EXAMPLES_KEY
        # the study's images, labels, eps, models and numerics enter through the attack study's key
        ("attack.*", IGNORED), ("trainer.*", IGNORED), ("compute.*", IGNORED), ("model.*", IGNORED),
        ("seed", IGNORED), ("target_model", IGNORED), *data_rules(content=IGNORED),
        *not_read("prior", "defense", "fooling"),
        *COMMON,
    ),
))

ACTIVATION_EXAMPLES_KEY = register(KeySpec(
    "activation_examples", inputs=("attack",),
    code=("stages/activations.py", "analysis/activations.py", "analysis/lit_activations.py", "attacks/"),
    rules=(
        ("activations.layers", AFFECTS), ("activations.figure_eps", AFFECTS),
        ("activations.*", IGNORED),  # examples_per_category: through the chosen images (the key's extra)
        ("attack.figure_eps", AFFECTS),  # the default figure eps
        ("target_model", AFFECTS),
        # which images are drawn (thresholds, categories) enters through the chosen indices
        ("attack.*", IGNORED), ("trainer.*", IGNORED), ("compute.*", IGNORED), ("model.*", IGNORED),
        ("seed", IGNORED), *data_rules(content=IGNORED),
        *not_read("prior", "defense", "fooling"),
        *COMMON,
    ),
))


def activations_key(ctx: RunContext) -> str:
    """What the per-image layer table depends on: the attack study, the eps values and the layers."""
    return stage_key(ctx, ACTIVATIONS_KEY)


def examples_key(ctx: RunContext, indices: list[int]) -> str:
    """The Figure 7/8 data: the study, the target model, the figure eps, the map layers and the images."""
    return stage_key(ctx, ACTIVATION_EXAMPLES_KEY, extra={"indices": sorted(indices)})


def select_examples(outcomes: pd.DataFrame, model: str, eps: float, n: int) -> pd.DataFrame:
    """Up to ``n`` high-confidence examples per category (the paper's four) of ``model`` at ``eps``: the
    most confident adversarial top-1 first, ties by index. Columns of the outcome table plus ``k``."""
    g = outcomes[(outcomes["model"] == model) & (outcomes["eps"] == eps) & outcomes["high_confidence"]]
    parts = []
    for cat in ADVERSARIAL_CATEGORIES:
        c = g[g["category"].astype(str) == cat].sort_values(["adv_top1_prob", "index"], ascending=[False, True])
        parts.append(c.head(n).assign(k=np.arange(min(n, len(c)))))
    return pd.concat(parts, ignore_index=True)


def merge_shard(rank_dir: Path, table_path: Path | None, examples_path: Path | None) -> None:
    """Rank 0's merge of one shard: every rank's rows and examples, padding duplicates dropped, written to
    ``table_path`` / ``examples_path`` (None: not wanted); then the rank files go."""
    rows, ex = merge_rank_shards(rank_dir)
    if table_path is not None:
        save_parquet(rows, table_path)
    if examples_path is not None:
        save_torch(ex, examples_path)
    shutil.rmtree(rank_dir)


def evaluate(ctx: RunContext, plan: Plan, table_dir: Path | None, ex_dir: Path | None,
             examples: list[int]) -> None:
    """Run the loop shard by shard (the study's shards and batch size), skipping shards already done.

    ``table_dir``: where the layer table's shards go (None: the table is stored already); ``ex_dir``:
    where the examples' shards go (None: stored already). A shard runs when its table part is missing or
    when it holds an example whose part is missing.
    """
    cfg, dm = ctx.cfg, ctx.datamodule
    dataset = dm.eval_dataset()
    n, size = len(dataset), int(cfg.attack.shard_size)
    batch = int(cfg.data.get("eval_batch_size") or cfg.data.batch_size)  # as attack_study.evaluate
    for s, start in enumerate(range(0, n, size)):
        stop = min(n, start + size)
        mine = [i for i in examples if start <= i < stop]
        table_path = table_dir / "shards" / f"{s:05d}.parquet" if table_dir is not None else None
        ex_path = ex_dir / "shards" / f"{s:05d}.pt" if ex_dir is not None and mine else None
        table_path = table_path if table_path is not None and not table_path.is_file() else None
        ex_path = ex_path if ex_path is not None and not ex_path.is_file() else None
        if table_path is None and ex_path is None:
            log.info("activations: shard %d already done, skipping", s)
            continue
        rank_dir = (table_path or ex_path).parent / f"{s:05d}.ranks"
        if rank_dir.exists():
            shutil.rmtree(rank_dir)
        models = {name: m for name, m in ctx.models.items()
                  if (table_path is not None and plan.change_layers[name])
                  or (ex_path is not None and name == ctx.target_model)}
        module = ActivationChangeModule(
            models, plan.epsilons, {m: plan.change_layers[m] for m in models}, rank_dir,
            use_true_labels=use_true_labels(cfg), map_model=ctx.target_model, map_layers=plan.map_layers,
            example_indices=mine if ex_path is not None else (), figure_eps=plan.figure_eps)
        loader = DataLoader(Subset(dataset, range(start, stop)), batch_size=batch,
                            num_workers=int(cfg.data.get("num_workers", 0)))
        trainer = make_trainer(ctx, "activations", 1, logger=False, inference_mode=False, callbacks=[])
        trainer.test(module, dataloaders=loader, verbose=False)
        if trainer.is_global_zero:
            merge_shard(rank_dir, table_path, ex_path)
        trainer.strategy.barrier()
        log.info("activations: shard %d (%d images) done", s, stop - start)


def finish_table(table_dir: Path, outcomes: pd.DataFrame) -> None:
    """Join the shards with the study's categories, check the recomputed adversarial predictions against
    the study's, write ``layer_change.parquet`` and drop the shards."""
    parts = sorted((table_dir / "shards").glob("*.parquet"))
    rows = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    study = outcomes[["model", "eps", "index", "adv_top1", "adv_top1_prob", *STUDY_COLUMNS]].rename(
        columns={"adv_top1": "study_adv_top1", "adv_top1_prob": "study_adv_top1_prob"})
    table = rows.merge(study, on=["model", "eps", "index"], how="left", validate="many_to_one")
    if table["study_adv_top1"].isna().any():
        raise RuntimeError("the layer table holds images the attack study does not: the store is inconsistent")
    differ = (table["adv_top1"] != table["study_adv_top1"]) | (table["adv_top1_prob"] != table["study_adv_top1_prob"])
    if differ.any():
        log.warning("activations: %d of %d rows' adversarial predictions differ from the attack study's "
                    "(non-deterministic kernels? set trainer.deterministic=true)", int(differ.sum()), len(table))
    table = table.drop(columns=["study_adv_top1", "study_adv_top1_prob"])
    save_parquet(table, table_dir / "layer_change.parquet")
    shutil.rmtree(table_dir / "shards")


def finish_examples(ex_dir: Path) -> None:
    """Concatenate the examples' shards into ``examples.pt`` (an empty dict when there are none)."""
    parts = [load_torch(p) for p in sorted((ex_dir / "shards").glob("*.pt"))]
    save_torch(concat_examples(parts), ex_dir / "examples.pt")
    if (ex_dir / "shards").exists():
        shutil.rmtree(ex_dir / "shards")


def example_rows(ex: dict, chosen: pd.DataFrame, plan: Plan, model: str) -> pd.DataFrame:
    """examples.csv: one row per figure example and map layer."""
    if not ex:
        return pd.DataFrame(columns=["model", "eps", "eps_255", "category", "k", "index", "label", "layer",
                                     "filter", "filter_norm", "clean_label", "clean_prob", "adv_label",
                                     "adv_prob", "figure"])
    pos = {int(i): p for p, i in enumerate(ex["index"].tolist())}
    cp, ap = ex["clean_logits"].double().softmax(1), ex["adv_logits"].double().softmax(1)
    recs = []
    for _, r in chosen.iterrows():
        p = pos[int(r["index"])]
        for j, layer in enumerate(plan.map_layers):
            recs.append({
                "model": model, "eps": plan.figure_eps, "eps_255": plan.figure_eps * 255.0,
                "category": str(r["category"]), "k": int(r["k"]), "index": int(r["index"]), "label": int(r["label"]),
                "layer": layer, "filter": int(ex["filters"][p, j]), "filter_norm": float(ex["filter_norms"][p, j]),
                "clean_label": int(cp[p].argmax()), "clean_prob": float(cp[p].max()),
                "adv_label": int(ap[p].argmax()), "adv_prob": float(ap[p].max()),
                "figure": f"activations_example_{r['category']}_{int(r['k'])}.png",
            })
    return pd.DataFrame.from_records(recs)


def summarize(ctx: RunContext, plan: Plan, table: pd.DataFrame, ex: dict, chosen: pd.DataFrame) -> dict[str, float]:
    """Tables, figures and metrics from the stored results (recomputes no activation)."""
    from ..report import figures

    cfg, run = ctx.cfg, ctx.run_dir
    adir, fdir = run / "activations", run / "figures"
    summary = change_summary(table, n_boot=int(cfg.attack.n_boot), seed=int(cfg.seed))
    save_csv(summary, adir / "layer_change.csv")
    metrics = {f"activations/{r.model}/eps={format_eps(r.eps)}/{r.layer}/rel_change": float(r.rel_change_mean)
               for r in summary[summary["category"] == "all"].itertuples()}
    target = ctx.target_model
    if ((summary["model"] == target) & (summary["eps"] > 0)).any():
        fig = figures.activation_depth(summary, target)
        log_figure(ctx, "activations/depth", figures.save_figure(fig, fdir / "activations_depth.png"))
    rows = example_rows(ex, chosen, plan, target)
    save_csv(rows, adir / "examples.csv")
    names = getattr(ctx.datamodule, "class_names", None)
    pos = {int(i): p for p, i in enumerate(ex["index"].tolist())} if ex else {}
    for _, r in chosen.iterrows():
        p = pos[int(r["index"])]
        er = rows[rows["index"] == r["index"]].iloc[0]
        fig = figures.activation_example(
            ex["clean"][p], ex["adv"][p], plan.map_layers, ex["heatmaps"][p], ex["filters"][p].tolist(),
            ex["filter_norms"][p].tolist(), clean=(int(er.clean_label), float(er.clean_prob)),
            adv=(int(er.adv_label), float(er.adv_prob)), true_label=int(r["label"]), class_names=names,
            title=f"{target}, {r['category']} example {int(r['k'])} (image {int(r['index'])}), "
                  f"eps={plan.figure_eps * 255:.3g}/255")
        log_figure(ctx, f"activations/example_{r['category']}_{int(r['k'])}",
                   figures.save_figure(fig, fdir / str(er.figure)))
    log_table(ctx, "activations/examples", rows)
    log_table(ctx, "activations/layer_change", summary)
    return metrics


def run(ctx: RunContext) -> dict[str, float]:
    plan = make_plan(ctx)
    key = study_key(ctx)
    if not distributed.broadcast_object(ctx.store.is_done("attack", key)):  # rank 0 decides for every rank
        log.info("activations: the attack study is not stored yet; running it first")
        attack_study.run(ctx)
    # categories and high confidence with the current summary settings (never stored: see derive_outcomes)
    outcomes = attack_study.derived_outcomes(ctx, read_outcomes(ctx.store.path("attack", key) / "outcomes.parquet"))
    chosen = (select_examples(outcomes, ctx.target_model, plan.figure_eps, plan.examples_per_category)
              if plan.examples_per_category else outcomes.iloc[:0].assign(k=0))
    indices = chosen["index"].astype(int).tolist()
    with distributed.claim(ctx.store, "activations", activations_key(ctx)) as table, \
            distributed.claim(ctx.store, "activation_examples", examples_key(ctx, indices)) as ex:
        if table.done and ex.done:
            log.info("activations: reusing layer table %s", table.dir)
        else:
            evaluate(ctx, plan, None if table.done else table.dir, None if ex.done else ex.dir, indices)
            if distributed.is_rank_zero():  # every rank ran the loop; rank 0 alone joins and stores
                if not table.done:
                    finish_table(table.dir, outcomes)
                if not ex.done:
                    finish_examples(ex.dir)
            table.commit()
            ex.commit()
    if not distributed.is_rank_zero():
        return {}
    with distributed.alone():
        rows = pd.read_parquet(table.dir / "layer_change.parquet")
        derived = outcomes[["model", "eps", "index", *DERIVED_STUDY_COLUMNS]]
        rows = rows.merge(derived, on=["model", "eps", "index"], how="left", validate="many_to_one")
        save_parquet(rows, ctx.run_dir / "activations" / "layer_change.parquet")
        metrics = summarize(ctx, plan, rows, load_torch(ex.dir / "examples.pt"), chosen)
    ctx.log_metrics(metrics)
    return metrics
