"""Stage ``report``: ``report.html`` from what the earlier stages stored (it only reads); to W&B the headline
table (and each headline value in the run summary), the per-eps series of the attack and defense tables
(plotted against eps) and the report itself as an artifact. Always runs last; ``advprior-report <run_dir>``
rebuilds the same page."""
from __future__ import annotations

import pytorch_lightning as pl

from ..context import RunContext
from ..report.headlines import headline_frame, headline_rows
from ..report.html import build_report
from ..report.rundata import RunData, is_number
from ..utils.loggers import log_artifact, log_series, log_summary, log_table


ATTACK_SERIES = ("clean_acc", "adv_acc", "label_changed_rate", "high_conf_rate", "fooling_rate",
                 "mean_second_prob_high_conf")


def eps_series(run: RunData) -> dict[float, dict[str, float]]:
    """eps (0-255 scale) -> {``attack/<model>/<metric>``, ``defense/<metric>``: value} from the stored tables."""
    points: dict[float, dict[str, float]] = {}
    attack = run.table("attack/summary.csv")
    if attack is not None:
        for _, r in attack.iterrows():
            row = points.setdefault(round(float(r["eps_255"]), 9), {})
            row.update({f"attack/{r['model']}/{m}": r[m] for m in ATTACK_SERIES if m in r and is_number(r[m])})
    defense = run.table("defense/summary.csv")
    if defense is not None:
        cols = [c for c in defense.columns if c not in ("eps", "eps_255") and not c.endswith(("_low", "_high"))]
        for _, r in defense.iterrows():
            row = points.setdefault(round(float(r["eps_255"]), 9), {})
            row.update({f"defense/{c}": r[c] for c in cols if is_number(r[c])})
    return points


def run(ctx: RunContext) -> dict[str, float]:
    if pl.utilities.rank_zero_only.rank != 0:  # one writer; the other ranks have nothing to add
        return {}
    path = build_report(ctx.run_dir)
    data = RunData(ctx.run_dir)
    rows = headline_rows(data)
    log_table(ctx, "report/headlines", headline_frame(rows))
    log_summary(ctx, {f"headline/{r.key}": r.value for r in rows if is_number(r.value)})
    log_series(ctx, eps_series(data))
    log_artifact(ctx, path, name="report", type="report")
    return {}
