"""Is the adaptive PGD strong enough? Adaptive accuracy at the configured (steps, restarts) and at 2x both.

Trains (or reuses from the store) the target model and its prior, then runs the defense's own per-batch
evaluation (``defense_batch``) on the evaluation images at each PGD setting and prints, per eps, the
posterior's adaptive PGD accuracy with its interval, the same at twice the steps and restarts, and whether
the change is below one interval width. Also prints the side-by-side defense summary columns.

    python scripts/adaptive_strength.py                       # the embedded default (digits, vgg_small)
    python scripts/adaptive_strength.py prior.space=shared    # any Hydra override
    python scripts/adaptive_strength.py --quick               # a tiny smoke run (1 epoch, 32 images)
    python scripts/adaptive_strength.py --json out.json       # results via advprior.utils.bench

Outputs go under $ADVPRIOR_ROOT (default: a temporary directory).
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from advprior.cli import CONFIG_DIR
from advprior.context import RunContext
from advprior.stages import defense, prior_fit, train
from advprior.stages.attack_study import epsilons, use_true_labels
from advprior.store import ArtifactStore
from advprior.utils.seeding import seed_everything
from advprior.validation import validate_config

log = logging.getLogger("adaptive_strength")

COLUMNS = ["eps_255", "n", "base_clean_acc", "post_clean_acc", "base_adv_acc", "post_adv_acc", "mitigation_rate",
           "n_high_conf", "detector_auc", "detector_auc_adaptive", "adaptive_fgsm_post_acc",
           "adaptive_pgd_only_post_acc", "adaptive_pgd_post_acc", "pgd_base_acc", "adaptive_det_post_acc"]


def build_context(overrides: list[str], root: Path) -> RunContext:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["logger=[csv]", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(root)
        cfg.paths.output_dir = str(root / "run")
        cfg.hydra.runtime.output_dir = str(root / "run")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    validate_config(cfg)
    seed_everything(cfg.seed)
    ctx = RunContext(cfg=cfg, run_dir=root / "run", store=ArtifactStore(cfg.paths.store_dir))
    train.run(ctx)
    prior_fit.run(ctx)
    return ctx


def evaluate(ctx: RunContext, dcfg) -> tuple[pd.DataFrame, float]:  # noqa: ANN001
    """The defense summary for the defense settings ``dcfg`` (every eval image, ``defense_batch`` per batch)
    and its cost: image forward passes through the target model per eval image (a load-independent proxy
    of the run time; every attack step is one forward + one backward)."""
    cfg = ctx.cfg
    base, defended = ctx.models[ctx.target_model], defense.defended_model(ctx)
    loader = torch.utils.data.DataLoader(ctx.datamodule.eval_dataset(),
                                         batch_size=int(cfg.data.get("eval_batch_size") or 64))
    passes = [0]
    # the inner network: the defended model reaches it through forward_with_features, not base.__call__
    hook = getattr(base, "net", base).register_forward_pre_hook(
        lambda _m, args: passes.__setitem__(0, passes[0] + args[0].shape[0]))
    try:
        rows = [defense.defense_batch(base, defended, x, y, idx, epsilons(cfg), dcfg,
                                      y if use_true_labels(cfg) else None, int(cfg.seed)) for x, y, idx in loader]
    finally:
        hook.remove()
    df = pd.concat(rows, ignore_index=True)
    summary = defense.defense_summary(df, float(cfg.attack.high_conf_threshold))
    return summary, passes[0] / df["index"].nunique()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run: 1 training epoch, 32 eval images")
    ap.add_argument("--json", type=Path, help="write the rows with advprior.utils.bench.write_results")
    ap.add_argument("--no-doubling", action="store_true", help="only the configured settings (a side-by-side run)")
    ap.add_argument("--previous", action="store_true",
                    help="also evaluate the adaptive settings before issue 10 (CE, PGD-10, one restart)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. prior.space=shared")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = ["model=[vgg_small]", *args.overrides]
    if args.quick:
        overrides = ["debug=fast", "data.eval_subset=32", "attack.epsilons=[8]", "prior.ae.epochs=2",
                     "defense.adaptive.pgd.steps=2", *overrides]
    root = Path(os.environ.get("ADVPRIOR_ROOT") or tempfile.mkdtemp(prefix="adaptive_strength_"))
    ctx = build_context(overrides, root)
    dcfg = ctx.cfg.defense
    base_summary, cost = evaluate(ctx, dcfg)
    doubled = dcfg.copy()
    with open_dict(doubled):
        doubled.adaptive.pgd.steps = 2 * int(dcfg.adaptive.pgd.steps)
        doubled.adaptive.pgd.restarts = 2 * int(dcfg.adaptive.pgd.restarts)
        doubled.adaptive.detector_aware.enabled = False
    double_summary, double_cost = (None, float("nan")) if args.no_doubling else evaluate(ctx, doubled)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    print(f"prior.space={ctx.cfg.prior.space}  pgd: steps={dcfg.adaptive.pgd.steps} "
          f"restarts={dcfg.adaptive.pgd.restarts} loss={dcfg.adaptive.pgd.loss}; model forwards per eval image: "
          f"{cost:.0f} (doubled, without the detector-aware attack: {double_cost:.0f})")
    print(base_summary[[c for c in COLUMNS if c in base_summary]].round(4).to_string(index=False))
    if args.previous:
        prev = dcfg.copy()
        with open_dict(prev):  # the settings before issue 10: CE on the posterior, PGD-10 at eps/4, one restart
            prev.adaptive.loss = "ce"
            prev.adaptive.pgd.steps, prev.adaptive.pgd.restarts, prev.adaptive.pgd.loss = 10, 1, "ce"
            prev.adaptive.pgd.alpha_factor, prev.adaptive.pgd.schedule = 0.25, "constant"
            prev.adaptive.detector_aware.enabled = False
        prev_summary, prev_cost = evaluate(ctx, prev)
        print(f"previous adaptive settings (CE, PGD-10 at eps/4, 1 restart; forwards per image {prev_cost:.0f}):")
        print(prev_summary[["eps_255", "adaptive_fgsm_post_acc", "adaptive_pgd_only_post_acc",
                            "adaptive_pgd_post_acc", "pgd_base_acc"]].round(4).to_string(index=False))
    if double_summary is None:
        return
    rows = []
    for (_, a), (_, b) in zip(base_summary.iterrows(), double_summary.iterrows()):
        width = a["adaptive_pgd_post_acc_high"] - a["adaptive_pgd_post_acc_low"]
        change = b["adaptive_pgd_post_acc"] - a["adaptive_pgd_post_acc"]
        rows.append({"eps_255": a["eps_255"], "adaptive_pgd_post_acc": a["adaptive_pgd_post_acc"],
                     "doubled": b["adaptive_pgd_post_acc"], "change": change, "interval_width": width,
                     "converged": abs(change) < width or change == 0})
    table = pd.DataFrame(rows)
    print("doubling steps and restarts:")
    print(table.round(4).to_string(index=False))
    if args.json:
        from advprior.utils.bench import BenchRow, write_results
        write_results(args.json, "adaptive_strength", [BenchRow(
            name=f"adaptive PGD accuracy change at eps={r['eps_255']:g}/255 when doubling steps and restarts",
            value=float(r["change"]), unit="abs", target=f"< interval width {r['interval_width']:.4f}",
            holds=bool(r["converged"]),
            detail=f"{r['adaptive_pgd_post_acc']:.4f} -> {r['doubled']:.4f}") for r in rows],
            settings={"overrides": overrides, "space": str(ctx.cfg.prior.space),
                      "pgd": dict(dcfg.adaptive.pgd)})


if __name__ == "__main__":
    main()
