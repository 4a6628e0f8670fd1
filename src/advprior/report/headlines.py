"""What a run found: the paper's claims, each with this run's number, its 95% interval and a verdict.

``headline_rows(run_dir)`` reads only the tables the stages stored (see ``RunData``) and returns
``Headline`` rows; the report's summary, the terminal's closing table, the W&B summary table and the
sweep report all come from here. A section whose tables are absent gives no rows.

Values of unit ``"%"`` are fractions shown as percentages, ``"pp"`` differences of fractions shown in
percentage points, ``""`` plain numbers. Verdicts compare the interval (not the point value) with the
paper's number or with zero.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .rundata import RunData, at_eps, eps_values, is_number

PAPER_HIGH_CONF_RATE = 3730 / 50000   # section 4.4: VGG-19, ImageNet val, eps 0.85/255
PAPER_SECOND_PROB = 0.25              # section 4.4: high-confidence examples put < 25% on the 2nd class
PAPER_MITIGATION = 0.80               # section 7
ADAPTIVE_NAMES = {"fgsm": "FGSM", "pgd": "PGD (worst case with the FGSM example)", "pgd_only": "PGD alone",
                  "det": "detector-aware PGD"}  # defense/summary.csv's adaptive_<name>_post_acc columns
STANDARD_EPS_255 = 8.0                # the usual L-inf budget; the adaptive attacks are read there if studied


@dataclass(frozen=True)
class Headline:
    """One claim checked on this run. ``key`` is a stable id (a sweep's column name)."""

    key: str
    section: str
    claim: str
    quantity: str
    value: float
    low: float | None = None
    high: float | None = None
    unit: str = "%"
    verdict: str = ""
    notes: str = ""

    def formatted(self) -> str:
        """``"2.2% [1.1, 3.8]"``, ``"-3.1 pp [-5.0, -1.2]"`` or ``"0.93"``; ``"n/a"`` for NaN."""
        return format_value(self.value, self.low, self.high, self.unit)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def status(self) -> str:
        """``"agrees"`` / ``"disagrees"`` with the paper's claim, ``"open"`` (unresolved) or ``""`` (context)."""
        v = self.verdict
        if v.startswith(AGREES):
            return "agrees"
        if v.startswith(DISAGREES):
            return "disagrees"
        return "open" if v else ""


# Verdict texts by what they say about the paper's claim (the row's ``status``).
AGREES = ("supported", "consistent", "no loss", "higher than the base", "more robust", "better than chance",
          "lower confidence on the target", "shrinks with depth")
DISAGREES = ("contradicted", "not supported", "below the paper", "above the paper", "less robust", "no gain",
             "lower than the base", "worse than chance", "chance level", "higher confidence on the target",
             "grows with depth")


def format_number(v: float | None, unit: str) -> str:
    if v is None or not is_number(v):
        return "n/a"
    if unit in ("%", "pp"):
        return f"{100 * v:.1f}"
    return f"{v:.3g}"


def format_value(value: float | None, low: float | None, high: float | None, unit: str) -> str:
    if value is None or not is_number(value):
        return "n/a"
    suffix = {"%": "%", "pp": " pp"}.get(unit, "")
    text = format_number(value, unit) + suffix
    if low is not None and high is not None and is_number(low) and is_number(high):
        text += f" [{format_number(low, unit)}, {format_number(high, unit)}]"
    return text


def eps_text(eps_255: float) -> str:
    return f"{eps_255:.3g}/255"


def _get(row: pd.Series, col: str, value_col: str | None = None) -> tuple[float, float | None, float | None]:
    """(value, low, high) of ``col`` (value from ``value_col`` when given, e.g. ``rel_change_mean``)."""
    v = row.get(value_col or col, math.nan)
    lo, hi = row.get(f"{col}_low"), row.get(f"{col}_high")
    f = (lambda x: float(x) if x is not None and is_number(x) else None)
    return (float(v) if is_number(v) else math.nan), f(lo), f(hi)


def versus(low: float | None, high: float | None, ref: float, below: str, inside: str, above: str) -> str:
    """Where the interval [low, high] lies relative to ``ref``."""
    if low is None or high is None:
        return ""
    if high < ref:
        return below
    if low > ref:
        return above
    return inside


def _first(df: pd.DataFrame | None, **eq: Any) -> pd.Series | None:
    if df is None:
        return None
    m = pd.Series(True, index=df.index)
    for k, v in eq.items():
        if k not in df:
            return None
        m &= df[k].astype(str) == str(v)
    return df[m].iloc[0] if m.any() else None


# ----------------------------------------------------------------------------- models

def _train_rows(run: RunData) -> list[Headline]:
    """Test accuracy of each trained model (shown only when no attack table gives the clean accuracy)."""
    return [Headline(k, "–", "(context) accuracy of the trained models on the test split",
                     f"test accuracy, {k.split('/')[1]}", float(v))
            for k, v in run.metrics.items() if k.startswith("train/") and k.endswith("/test_acc") and is_number(v)]


# ----------------------------------------------------------------------------- FGSM (section 4.4)

def _fgsm_rows(run: RunData, e: float) -> list[Headline]:
    summary, target = run.table("attack/summary.csv"), run.target_model
    if summary is None or target is None:
        return []
    row = _first(at_eps(summary, e), model=target)
    if row is None:
        return []
    where = f"{target}, eps {eps_text(e)}"
    rows = []
    v, lo, hi = _get(row, "clean_acc")
    rows.append(Headline(f"attack/{target}/clean_acc", "4.4", "(context) accuracy of the attacked model on the "
                         "evaluation images", f"clean accuracy, {target}", v, lo, hi, notes=f"n={int(row['n'])}"))
    v, lo, hi = _get(row, "label_changed_rate")
    rows.append(Headline(f"attack/{target}/label_changed_rate@{e:g}", "4.4",
                         "FGSM at eps 0.85/255 changes the label of some images", f"label changed, {where}",
                         v, lo, hi, notes="the paper gives no number"))
    v, lo, hi = _get(row, "high_conf_rate")
    rows.append(Headline(
        f"attack/{target}/high_conf_rate@{e:g}", "4.4",
        "few images get a high-confidence (> 50%) adversarial example: 3730/50000 = 7.5% on VGG-19", f"high-confidence "
        f"adversarial examples, {where}", v, lo, hi,
        verdict=versus(lo, hi, PAPER_HIGH_CONF_RATE, "below the paper's 7.5%", "consistent with 7.5%",
                       "above the paper's 7.5%"),
        notes=f"{int(row.get('n_high_conf', 0))} of {int(row['n'])} images"))
    v, lo, hi = _get(row, "mean_second_prob_high_conf")
    rows.append(Headline(
        f"attack/{target}/mean_second_prob_high_conf@{e:g}", "4.4",
        "high-confidence adversarial examples put < 25% on their second-best class",
        f"mean 2nd-best probability of high-confidence examples, {where}", v, lo, hi,
        verdict=versus(lo, hi, PAPER_SECOND_PROB, "supported", "unresolved", "not supported")
        if is_number(v) else "no high-confidence examples"))
    return rows


def _pair_diff(run: RunData, a: str, b: str, e: float, metric: str) -> tuple[float, float | None, float | None, str]:
    """rate(a) - rate(b) at eps ``e``: the paired interval from ``attack/paired.csv`` when stored, else the
    difference of the two rates without an interval (notes give both rates with their intervals)."""
    paired = run.table("attack/paired.csv")
    if paired is not None:
        sel = at_eps(paired, e)
        for x, y, sign in ((a, b, 1.0), (b, a, -1.0)):
            r = _first(sel, model_a=x, model_b=y, metric=metric)
            if r is not None:
                d, lo, hi = float(r["diff"]), float(r["diff_low"]), float(r["diff_high"])
                lo, hi = (lo, hi) if sign > 0 else (-hi, -lo)
                return sign * d, lo, hi, f"paired ({r.get('method', 'paired')}), n={int(r['n'])}"
    summary = at_eps(run.table("attack/summary.csv"), e)
    ra, rb = _first(summary, model=a), _first(summary, model=b)
    if ra is None or rb is None:
        return math.nan, None, None, ""
    (va, la, ha), (vb, lb, hb) = _get(ra, metric), _get(rb, metric)
    return (va - vb, None, None,
            f"{a} {format_value(va, la, ha, '%')} vs {b} {format_value(vb, lb, hb, '%')}")


def _diff_verdict(lo: float | None, hi: float | None, run: RunData, a: str, b: str, metric: str, e: float,
                  yes: str, no: str) -> str:
    """``yes`` when a's rate is credibly above b's (paired interval above 0, or the rates' intervals
    disjoint), ``no`` when below, else "unresolved"."""
    if lo is not None and hi is not None:
        return versus(lo, hi, 0.0, no, "unresolved", yes)
    summary = at_eps(run.table("attack/summary.csv"), e)
    (_, la, ha), (_, lb, hb) = _get(_first(summary, model=a), metric), _get(_first(summary, model=b), metric)
    if None in (la, ha, lb, hb):
        return ""
    return yes if la > hb else no if ha < lb else "unresolved (intervals overlap)"


def _dropout_twins(run: RunData, a: str, b: str) -> bool:
    """The two models' configs differ only in ``dropout`` (the dropout experiment's pair)."""
    ca, cb = run.model_config(a), run.model_config(b)
    if not ca or not cb or ca.get("dropout") == cb.get("dropout"):
        return False
    keys = (set(ca) | set(cb)) - {"dropout"}  # a key one config leaves out is its default, null
    return all(ca.get(k) == cb.get(k) for k in keys)


def _comparison_rows(run: RunData, eps_list: list[float]) -> list[Headline]:
    """Depth (deeper vs shallower) and dropout (more vs less dropout) comparisons of label-changed rates."""
    summary, target = run.table("attack/summary.csv"), run.target_model
    if summary is None or target is None:
        return []
    models = [m for m in dict.fromkeys(summary["model"]) if m != target]
    rows = []
    metric = "label_changed_rate"
    for other in models:
        if _dropout_twins(run, target, other):
            pa, pb = sorted((target, other), key=lambda m: -float(run.model_config(m).get("dropout") or 0))
            for e in eps_list:
                d, lo, hi, notes = _pair_diff(run, pa, pb, e, metric)
                rows.append(Headline(
                    f"dropout/{pa}-{pb}/{metric}@{e:g}", "7", "dropout may decrease robustness (more label changes "
                    "with dropout)", f"label changed: {pa} (dropout {run.model_config(pa).get('dropout')}) - {pb} "
                    f"(dropout {run.model_config(pb).get('dropout')}), eps {eps_text(e)}", d, lo, hi, unit="pp",
                    verdict=_diff_verdict(lo, hi, run, pa, pb, metric, e, "supported", "contradicted"),
                    notes=notes))
            continue
        da, db = run.model_depth(target), run.model_depth(other)
        deep, shallow = (target, other) if da is None or db is None or da >= db else (other, target)
        depth_known = da is not None and db is not None and da != db
        for e in eps_list:
            d, lo, hi, notes = _pair_diff(run, deep, shallow, e, metric)
            if depth_known:
                notes = f"{deep}: {max(da, db)} weight layers, {shallow}: {min(da, db)}; {notes}"
            rows.append(Headline(
                f"depth/{deep}-{shallow}/{metric}@{e:g}", "7", "deeper networks are less susceptible than shallow "
                "ones (fewer label changes)", f"label changed: {deep} - {shallow}, eps {eps_text(e)}", d, lo, hi,
                unit="pp", verdict=_diff_verdict(lo, hi, run, deep, shallow, metric, e, "contradicted", "supported")
                if depth_known else "depths unknown",
                notes=notes))
    return rows


def _transfer_rows(run: RunData, e: float) -> list[Headline]:
    transfer, target = run.table("attack/transfer.csv"), run.target_model
    if transfer is None or target is None:
        return []
    rows = []
    for _, r in at_eps(transfer, e).iterrows():
        if target not in (r["source"], r["target"]) or r["source"] == r["target"]:
            continue
        v, lo, hi = _get(r, "fooling_rate")
        rows.append(Headline(
            f"transfer/{r['source']}->{r['target']}/fooling_rate@{e:g}", "4.4",
            "(extension) FGSM examples crafted on one model fool another",
            f"transfer {r['source']} -> {r['target']}: fooling rate, eps {eps_text(e)}", v, lo, hi,
            notes=f"among {int(r['n_correct'])} images the target classifies correctly"))
    return rows


# ----------------------------------------------------------------------------- defense (section 7)

def _defense_rows(run: RunData, e: float, e_ref: float) -> list[Headline]:
    summary = run.table("defense/summary.csv")
    if summary is None:
        return []
    rows = []
    for eps in dict.fromkeys((e, e_ref)):
        sel = at_eps(summary, eps)
        if not len(sel):
            continue
        r = sel.iloc[0]
        v, lo, hi = _get(r, "mitigation_rate")
        rv, rlo, rhi = _get(r, "recovery_rate")
        rows.append(Headline(
            f"defense/mitigation_rate@{eps:g}", "7", "the prior mitigates 80% of the high-confidence adversarial "
            "examples", f"mitigation rate, eps {eps_text(eps)}", v, lo, hi,
            verdict=versus(lo, hi, PAPER_MITIGATION, "below the paper's 80%", "consistent with 80%",
                           "above the paper's 80%") if is_number(v) else "no high-confidence examples",
            notes=f"{int(r.get('n_high_conf', 0))} high-confidence examples; recovered to the true label: "
                  f"{format_value(rv, rlo, rhi, '%')}"))
    r = summary.iloc[0]
    v, lo, hi = _get(r, "post_clean_acc")
    b, blo, bhi = _get(r, "base_clean_acc")
    rows.append(Headline("defense/post_clean_acc", "7", "(context) the posterior keeps the clean accuracy",
                         "clean accuracy of the posterior", v, lo, hi,
                         verdict=versus(lo, hi, b, "lower than the base model", "no loss", "higher than the base model"),
                         notes=f"base model {format_value(b, blo, bhi, '%')}"))
    sel = at_eps(summary, e)
    if len(sel) and "detector_auc" in sel:
        v, lo, hi = _get(sel.iloc[0], "detector_auc")
        rows.append(Headline(f"defense/detector_auc@{e:g}", "7", "(extension) the prior's density detects "
                             "adversarial inputs (ROC-AUC; 0.5 = chance)", f"detector ROC-AUC, eps {eps_text(e)}",
                             v, lo, hi, unit="", verdict=versus(lo, hi, 0.5, "worse than chance", "chance level",
                                                                "better than chance") if lo is not None else "",
                             notes=f"{int(sel.iloc[0].get('n_detector_adv', 0))} label-changing examples vs clean"))
    sel = at_eps(summary, e_ref)
    if len(sel):
        r = sel.iloc[0]
        for col in sorted(c for c in summary.columns if c.startswith("adaptive_") and c.endswith("_acc")):
            name = col[len("adaptive_"):-len("_post_acc")] if col.endswith("_post_acc") else col[len("adaptive_"):]
            base_col = "pgd_base_acc" if "pgd" in name and "pgd_base_acc" in r else "base_adv_acc"
            v, lo, hi = _get(r, col)
            b, blo, bhi = _get(r, base_col)
            rows.append(Headline(
                f"defense/{col}@{e_ref:g}", "7", "(extension) the defense against an attacker who differentiates "
                "through the posterior", f"posterior accuracy under adaptive {ADAPTIVE_NAMES.get(name, name.upper())}, "
                f"eps {eps_text(e_ref)}",
                v, lo, hi, verdict=versus(lo, hi, b, "less robust than the base model", "no gain over the base model",
                                          "more robust than the base model") if blo is not None else "",
                notes=f"base model under {'the same PGD' if base_col == 'pgd_base_acc' else 'FGSM'}: "
                      f"{format_value(b, blo, bhi, '%')}"))
    return rows


# ----------------------------------------------------------------------------- fooling (section 4.2)

def _fooling_rows(run: RunData) -> list[Headline]:
    summary = run.table("fooling/summary.csv")
    if summary is None:
        return []
    rows = []
    for _, r in summary.iterrows():
        src, tgt, enc = r["source"], r["target"], r.get("encoding", "")
        sv, slo, shi = _get(r, "source_conf_mean")
        if src == tgt:
            rows.append(Headline(f"fooling/{src}/{enc}/source_conf_mean", "4.2", "evolved images are classified "
                                 "with high confidence by the net they were evolved on",
                                 f"mean confidence of {enc} fooling images on {src}", sv, slo, shi,
                                 notes=f"n={int(r['n'])}"))
            continue
        v, lo, hi = _get(r, "transfer_rate")
        tv, tlo, thi = _get(r, "target_conf_mean")
        verdict = ""
        if None not in (slo, shi, tlo, thi):
            verdict = ("lower confidence on the target (supported)" if thi < slo else
                       "higher confidence on the target (contradicted)" if tlo > shi else "unresolved")
        rows.append(Headline(
            f"fooling/{src}->{tgt}/{enc}/transfer_rate", "4.2", "fooling images evolved on one net are classified "
            "differently, and almost always with lower confidence, by another", f"{enc} fooling images "
            f"{src} -> {tgt}: transfer rate", v, lo, hi, verdict=verdict,
            notes=f"confidence {format_value(sv, slo, shi, '%')} on {src}, {format_value(tv, tlo, thi, '%')} on {tgt}; "
                  f"n={int(r['n'])}"))
    return rows


# ----------------------------------------------------------------------------- activations (section 5)

def _activation_rows(run: RunData, e: float) -> list[Headline]:
    df = run.table("activations/layer_change.csv")
    if df is None:
        return []
    target = run.target_model if run.target_model in set(df["model"]) else df["model"].iloc[0]
    df = df[df["model"] == target]
    eps_have = eps_values(df)
    eps = e if any(math.isclose(e, x, rel_tol=1e-6) for x in eps_have) else eps_have[-1]
    df = at_eps(df, eps)
    cats = list(dict.fromkeys(df["category"].astype(str)))
    cat = next((c for c in ("all", "label_changed", "true") if c in cats), cats[0])
    df = df[df["category"].astype(str) == cat].sort_values("depth")
    if len(df) < 2:
        return []
    first, last = df.iloc[0], df.iloc[-1]
    peak = df.loc[df["rel_change_mean"].idxmax()]
    claim = ("the adversarial change of the activations shrinks through the conv layers (conv1_2 > conv3_1 > "
             "conv5_1); most of the change happens late, in the dense layers")
    where = f"{target}, eps {eps_text(eps)}, {cat}"
    rows = []
    for r in (first, last):
        v, lo, hi = _get(r, "rel_change", "rel_change_mean")
        rows.append(Headline(f"activations/{target}/{r['layer']}/rel_change@{eps:g}", "5", claim,
                             f"relative activation change at {r['layer']} (depth {int(r['depth'])}), {where}",
                             v, lo, hi, unit=""))
    flo, fhi, llo, lhi = rows[0].low, rows[0].high, rows[1].low, rows[1].high
    verdict = ""
    if None not in (flo, fhi, llo, lhi):
        verdict = ("shrinks with depth (supported)" if lhi < flo else "grows with depth (contradicted)"
                   if llo > fhi else "unresolved")
    rows[-1] = Headline(**{**rows[-1].as_dict(), "verdict": verdict})
    v, lo, hi = _get(peak, "rel_change", "rel_change_mean")
    rows.append(Headline(f"activations/{target}/peak_layer@{eps:g}", "5", "where the activation change is largest",
                         f"largest change: {peak['layer']} (depth {int(peak['depth'])} of {int(df['depth'].max())}), "
                         f"{where}", v, lo, hi, unit=""))
    return rows


def headline_rows(run_dir: str | Path | RunData) -> list[Headline]:
    """Every headline of a run, in the order of the paper's sections as the report shows them."""
    run = run_dir if isinstance(run_dir, RunData) else RunData(Path(run_dir))
    e = run.paper_eps_255
    summary = run.table("attack/summary.csv")
    eps_all = eps_values(summary) if summary is not None else [e]
    e_max = eps_all[-1]
    e_ref = STANDARD_EPS_255 if any(math.isclose(STANDARD_EPS_255, x) for x in eps_all) else e_max
    defense = run.table("defense/summary.csv")
    if defense is not None and not any(math.isclose(e_ref, x) for x in eps_values(defense)):
        e_ref = eps_values(defense)[-1]
    return [
        *(_train_rows(run) if summary is None else []),
        *_fgsm_rows(run, e),
        *_transfer_rows(run, e),
        *_comparison_rows(run, list(dict.fromkeys((e, e_max)))),
        *_fooling_rows(run),
        *_activation_rows(run, e),
        *_defense_rows(run, e, e_ref),
    ]


def headline_frame(rows: list[Headline]) -> pd.DataFrame:
    """The rows as a table (one column per ``Headline`` field)."""
    cols = list(Headline.__dataclass_fields__)
    return pd.DataFrame([r.as_dict() for r in rows], columns=cols)
