"""Stage ``fooling``: fooling images (paper section 4.2, Figure 1; Nguyen, Yosinski & Clune 2015).

For each source model and encoding (CPPN, and the direct pixel encoding as the control), MAP-Elites
evolves one image per class that the source classifies as that class with the highest probability it
can find. The archive is stored (keyed by ``fooling_key``) and checkpointed during the search, so a
killed run resumes. Every elite is then scored by its source and by every target model, which gives
``fooling/scores.csv``, ``fooling/summary.csv`` (transfer rates and confidences with 95% intervals),
``fooling/progress.csv`` (the search per generation) and the Figure-1 grids
``figures/fooling_<source>_to_<target>_<encoding>.png``.

The search is not data-parallel: under DDP rank 0 runs it and the other ranks wait at a barrier.
"""
from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import distributed
from ..config.validate import check_fooling_models, check_node
from ..context import RunContext
from ..fooling.config import ENCODINGS, FoolingConfig, resolve_device
from ..fooling.encodings import build_encoding
from ..fooling.map_elites import EliteArchive, class_probabilities, map_elites
from ..fooling.scoring import fooling_summary, score_elites
from ..keys import AFFECTS, COMMON, IGNORED, KeySpec, data_rules, not_read, register, stage_key
from ..store import link_into
from ..utils.io import load_torch, save_csv, save_json, save_torch
from ..utils.loggers import log_figure, log_table

log = logging.getLogger(__name__)


def fooling_config(ctx: RunContext) -> FoolingConfig:
    """The checked ``fooling`` config; its sources and targets must be configured models."""
    fcfg = check_node(ctx.cfg.fooling, FoolingConfig, "fooling")
    check_fooling_models(ctx.cfg, {"fooling": fcfg, "model": ctx.cfg.model})
    return fcfg


def _fooling_spec(encoding: str) -> KeySpec:
    """What the elites evolved on a source with ``encoding`` depend on: the source's weights (its identity),
    the render size, the search budget, that encoding's settings and the seed. Not the targets, thresholds,
    figures or checkpoint interval (which never change the archive), nor the other encoding's settings."""
    others = [e for e in ENCODINGS if e != encoding]
    return register(KeySpec(
        f"fooling_{encoding}", per_model=True, inputs=("model",),
        code=("stages/fooling.py", "fooling/", "config/fooling.py"),
        rules=(
            *[(f"fooling.{o}.*", IGNORED) for o in others],
            ("fooling.encodings", IGNORED), ("fooling.sources", IGNORED), ("fooling.targets", IGNORED),
            ("fooling.thresholds", IGNORED), ("fooling.n_resamples", IGNORED), ("fooling.grid_samples", IGNORED),
            ("fooling.checkpoint_every", IGNORED),  # resumable checkpoints of the same search
            ("fooling.*", AFFECTS),  # population, generations, batch size, device, this encoding's settings
            ("seed", AFFECTS),
            *data_rules(affects=("image_size", "channels"), content=IGNORED),  # the render size
            ("trainer.*", IGNORED), ("compute.*", IGNORED),  # the search runs the model itself, in float32
            ("model.*", IGNORED),  # the source enters through its identity
            ("target_model", IGNORED), *not_read("attack", "prior", "defense", "activations"),
            *COMMON,
        ),
    ))


FOOLING_KEYS: dict[str, KeySpec] = {e: _fooling_spec(e) for e in ENCODINGS}


def fooling_key(ctx: RunContext, source: str, encoding: str) -> str:
    return stage_key(ctx, FOOLING_KEYS[encoding], model=source)


def search_seeds(seed: int, source: str, encoding: str) -> list[np.random.SeedSequence]:
    """Independent streams for one search: [parent selection, the encoding's generator]."""
    return np.random.SeedSequence([int(seed), zlib.crc32(source.encode()), ENCODINGS.index(encoding)]).spawn(2)


def evolve(ctx: RunContext, fcfg: FoolingConfig, source: str, encoding: str) -> Path:
    """Run (or resume, or reuse) the search of ``source`` x ``encoding``; returns its store directory holding
    ``elites.pt`` (``images`` (K, C, H, W) float in [0, 1], ``bins`` (K,)), ``genomes.json``, ``elites.csv``
    (the source's scores during the search) and ``progress.csv``."""
    with ctx.store.claim(FOOLING_KEYS[encoding].stage, fooling_key(ctx, source, encoding)) as art:
        if art.done:
            log.info("fooling: reusing the %s elites of %s (%s)", encoding, source, art.dir)
        else:
            search(ctx, fcfg, source, encoding, art)
        return art.dir


def search(ctx: RunContext, fcfg: FoolingConfig, source: str, encoding: str, art) -> None:
    """The MAP-Elites search into ``art.dir`` (resuming its checkpoint), committed when done."""
    out = art.dir
    model = ctx.models[source]
    device = resolve_device(fcfg, model)
    sel, enc_seed = search_seeds(int(ctx.cfg.seed), source, encoding)
    encoding_obj = build_encoding(encoding, fcfg, tuple(ctx.datamodule.input_shape), device, enc_seed)
    t0 = time.perf_counter()
    with moved_to([model], device):
        archive = map_elites(class_probabilities(model), encoding_obj, int(ctx.datamodule.num_classes),
                             fcfg.population, fcfg.generations, fcfg.batch_size, np.random.default_rng(sel),
                             checkpoint=out / "checkpoint.pt", checkpoint_every=fcfg.checkpoint_every,
                             label=f"fooling {source}/{encoding}")
    seconds = time.perf_counter() - t0
    save_elites(out, archive, encoding_obj)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    art.commit({"evaluations": archive.evaluations, "search_seconds": seconds})
    log.info("fooling: %s/%s evolved in %.1f s (%d evaluations)", source, encoding, seconds, archive.evaluations)


def save_elites(out: Path, archive: EliteArchive, encoding) -> None:
    bins = archive.filled()
    save_torch({"images": archive.images[torch.from_numpy(bins).to(archive.images.device)].cpu(),
                "bins": torch.from_numpy(bins)}, out / "elites.pt")
    save_json([{"bin_class": int(k), "genome": encoding.gene_to_json(archive.genes[k])} for k in bins],
              out / "genomes.json")
    save_csv(pd.DataFrame({"bin_class": bins, "bin_class_prob": archive.fitness.numpy()[bins],
                           "top1": archive.top1.numpy()[bins], "top1_prob": archive.top1_prob.numpy()[bins]}),
             out / "elites.csv")
    save_csv(pd.DataFrame(archive.history), out / "progress.csv")


@contextmanager
def moved_to(models: list[torch.nn.Module], device: torch.device) -> Iterator[None]:
    """Move ``models`` to ``device`` for the block, then back to where each one was."""
    homes = [next(m.parameters()).device for m in models]
    for m in models:
        m.to(device)
    try:
        yield
    finally:
        for m, home in zip(models, homes):
            m.to(home)


def _label(names, cls: int, width: int = 16) -> str:
    name = str(names[cls]) if names is not None else str(cls)
    return name if len(name) <= width else name[:width - 1] + "…"


def grid_figure(ctx: RunContext, fcfg: FoolingConfig, scores: pd.DataFrame, images: torch.Tensor, bins: list[int],
                source: str, target: str, encoding: str) -> Path:
    """Figure 1 for one pair: the ``grid_samples`` elites the source is most confident of (bin-class
    probability), the source's prediction above each image (and the bin's class where the source predicts
    another) and the target's prediction below."""
    from ..report.figures import fooling_grid, save_figure

    names = getattr(ctx.datamodule, "class_names", None)
    g = scores[(scores["source"] == source) & (scores["encoding"] == encoding)]
    src = g[g["scored_by"] == source].set_index("bin_class")
    tgt = g[g["scored_by"] == target].set_index("bin_class")
    chosen = src.sort_values(["bin_class_prob"], ascending=False, kind="stable").index[:fcfg.grid_samples]
    pos = {k: i for i, k in enumerate(bins)}
    fig = fooling_grid(
        [images[pos[k]] for k in chosen],
        [f"{source}: {_label(names, src.at[k, 'top1'])} ({src.at[k, 'top1_prob']:.2f})"
         + ("" if src.at[k, "top1"] == k else f"\n[bin {_label(names, k)}: {src.at[k, 'bin_class_prob']:.2f}]")
         for k in chosen],
        [f"{target}: {_label(names, tgt.at[k, 'top1'])} ({tgt.at[k, 'top1_prob']:.2f})" for k in chosen],
        title=f"{encoding} fooling images evolved on {source} (above), scored by {target} (below)")
    return save_figure(fig, ctx.run_dir / "figures" / f"fooling_{source}_to_{target}_{encoding}.png")


def run(ctx: RunContext) -> dict[str, float]:
    fcfg = fooling_config(ctx)
    sources = fcfg.sources or list(ctx.cfg.model)
    targets = fcfg.targets or list(ctx.cfg.model)
    # not data-parallel: rank 0 searches, the others wait (rank 0's error reaches them)
    distributed.run_on_rank_zero(lambda: [evolve(ctx, fcfg, s, e) for s in sources for e in fcfg.encodings])
    if not distributed.is_rank_zero():  # scoring, tables, figures and logs: rank 0 alone
        return {}
    fdir = ctx.run_dir / "fooling"
    scores, progress, elites = [], [], {}
    for source in sources:
        scorers = {source: ctx.models[source], **{t: ctx.models[t] for t in targets if t != source}}
        if len(scorers) == 1:
            log.warning("fooling: no model besides %s scores its elites; add one to fooling.targets", source)
        for enc in fcfg.encodings:
            out = ctx.store.path(FOOLING_KEYS[enc].stage, fooling_key(ctx, source, enc))
            saved = load_torch(out / "elites.pt")
            elites[(source, enc)] = (saved["images"], saved["bins"].tolist())
            with moved_to(list(scorers.values()), resolve_device(fcfg, ctx.models[source])):
                scores.append(score_elites(source, enc, saved["images"], saved["bins"].tolist(), scorers,
                                           fcfg.batch_size))
            progress.append(pd.read_csv(out / "progress.csv").assign(source=source, encoding=enc))
            for name in ("elites.pt", "genomes.json"):
                link_into(out / name, fdir / "elites" / f"{source}_{enc}_{name}")
    scores_df = pd.concat(scores, ignore_index=True)
    summary = fooling_summary(scores_df, fcfg.thresholds, fcfg.n_resamples, int(ctx.cfg.seed))
    progress_df = pd.concat(progress, ignore_index=True)
    save_csv(scores_df, fdir / "scores.csv")
    save_csv(summary, fdir / "summary.csv")
    save_csv(progress_df[["source", "encoding"] + [c for c in progress_df.columns if c not in ("source", "encoding")]],
             fdir / "progress.csv")
    metrics: dict[str, float] = {}
    for (source, enc), g in scores_df[scores_df["scored_by"] == scores_df["source"]].groupby(["source", "encoding"]):
        p = g["bin_class_prob"].to_numpy()
        metrics[f"fooling/{source}/{enc}/source_conf_mean"] = float(g["top1_prob"].mean())
        metrics[f"fooling/{source}/{enc}/bin_class_prob_mean"] = float(p.mean())
        for th in fcfg.thresholds:
            metrics[f"fooling/{source}/{enc}/share_above_{th:g}"] = float((p > th).mean())
    for _, r in summary.iterrows():
        for col in ("transfer_rate", "target_conf_mean", "target_bin_prob_mean"):
            metrics[f"fooling/{r.source}/{r.target}/{r.encoding}/{col}"] = float(r[col])
        images, bins = elites[(r.source, r.encoding)]
        path = grid_figure(ctx, fcfg, scores_df, images, bins, r.source, r.target, r.encoding)
        log_figure(ctx, f"fooling/{r.source}_to_{r.target}/{r.encoding}", path)
    log_table(ctx, "fooling/scores", scores_df)
    log_table(ctx, "fooling/summary", summary)
    ctx.log_metrics(metrics)
    return metrics
