"""The paper's claims judged across training seeds: aggregate the jobs of a ``claims`` multirun.

Each job of the sweep is one training seed: its own trained models, attack study and defense, on the same
evaluation images. One trained model per arm says nothing about how much a number moves when the model is
retrained (the embedded default's ``vgg_small`` label-changed rate at 32/255 moved from 45% to 38% between
two CPUs with the same seed); the spread across seeds does.

``aggregate(sweep_dir, spec)`` reads every finished job's tables and returns:

- ``numbers``: one row per headline number (``NUMBER_COLUMNS``): ``group`` (``train``, ``attack``,
  ``paired``, ``transfer``, ``defense``, ``fooling``, ``activations``), ``name`` (a model, a pair ``a-vs-b``,
  ``source->target``, ``source->target:encoding`` for fooling, ``<depth>:<layer>`` of the target model for
  the activations' relative change over all images),
  ``eps``/``eps_255`` (NaN for ``train``), ``metric``, then ``seed_<s>`` (the per-seed value), ``n_seeds``
  (finite values), ``mean``, ``sd`` and ``low``/``high``: the Student-t (1 - alpha) interval across seeds
  (``intervals.t_interval``, within ``value_range`` of the metric; NaN bounds with fewer than two seeds).
- ``verdicts``: one row per (claim, eps, comparison) (``VERDICT_COLUMNS``) and the claim's verdict.

**The verdict rule.** Each comparison has a per-seed value (the paired difference ``a - b`` of the
susceptibility metric on the same images, or the mitigation rate), a reference (0, or the paper's 0.8) and a
claimed side. Across seeds: *supported* when the t interval lies entirely on the claimed side of the
reference (excludes it), *contradicted* when it lies entirely on the other side, *inconclusive* when it
contains the reference or fewer than two seeds give a value. A claim with several comparisons (deep vs each
shallow net) is supported when all of them are, contradicted when at least one is and none supports it,
and inconclusive otherwise. The headline verdict of a claim is the one at the paper's eps
(``attack.figure_eps``, 0.85/255); the other eps are reported beside it.

The claims (``ClaimSpec``): "deeper nets are less susceptible to FGSM" (``deeper`` minus each of
``shallower``, ``metric`` (label-changed rate) below 0); "dropout lowers robustness" (``with_dropout``
minus ``without_dropout`` above 0); "the prior mitigates 80% of high-confidence examples" (the defense's
``mitigation_rate`` at least ``mitigation``: supported when the interval lies at or above 0.8, so a
reproduction whose interval straddles 0.8 reads inconclusive).
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from advprior.analysis.intervals import t_interval
from advprior.utils.io import save_csv, save_json

log = logging.getLogger(__name__)

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"

SUSCEPTIBILITY_METRICS = ("label_changed_rate", "high_conf_rate", "fooling_rate")
"""Paired metrics (``compare.PAIRED_METRICS``) where higher means more susceptible: the claims' ``metric``."""

ATTACK_METRICS = ("clean_acc", "adv_acc", "label_changed_rate", "high_conf_rate", "fooling_rate",
                  "mean_second_prob_high_conf")
"""Columns of each job's ``attack/summary.csv`` aggregated across seeds."""

FOOLING_METRICS = ("source_conf_mean", "transfer_rate", "target_conf_mean")
"""Columns of each job's ``fooling/summary.csv`` aggregated across seeds."""

KEY_COLUMNS = ("group", "name", "eps", "eps_255", "metric")
NUMBER_COLUMNS = KEY_COLUMNS + ("n_seeds", "mean", "sd", "low", "high")
"""Columns of ``claims.csv`` (the ``seed_<s>`` columns follow ``metric``)."""

VERDICT_COLUMNS = ("claim", "eps", "eps_255", "paper_eps", "comparison", "metric", "side", "reference", "n_seeds",
                   "mean", "low", "high", "comparison_verdict", "verdict")
"""Columns of ``verdicts.csv``: ``side`` is ``below``/``above``/``at_least`` the ``reference``."""


@dataclass(frozen=True)
class ClaimSpec:
    """Which models and thresholds the claims are judged with (the ``claims`` callback's settings)."""

    deeper: str = "vgg_small"
    shallower: Sequence[str] = ("shallow_hidden", "shallow")
    with_dropout: str = "vgg_small"
    without_dropout: str = "vgg_small_nodropout"
    metric: str = "label_changed_rate"
    mitigation: float = 0.8
    alpha: float = 0.05
    models: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shallower", tuple(self.shallower))
        object.__setattr__(self, "models", (self.deeper, *self.shallower, self.with_dropout, self.without_dropout))
        if self.metric not in SUSCEPTIBILITY_METRICS:
            raise ValueError(f"claims metric must be one of {list(SUSCEPTIBILITY_METRICS)} (a paired rate where "
                             f"higher means more susceptible), got {self.metric!r}")
        if not 0 < self.alpha < 1 or not 0 <= self.mitigation <= 1:
            raise ValueError(f"claims alpha must be in (0, 1) and mitigation in [0, 1], got {self.alpha}, "
                             f"{self.mitigation}")

    def check_models(self, models: Sequence[str]) -> None:
        """ValueError naming the fix when a model the claims compare is not in the run's ``model`` list."""
        missing = [m for m in dict.fromkeys(self.models) if m not in models]
        if missing:
            raise ValueError(f"the claims compare models {missing} that are not in model={list(models)}: add them to "
                             "model, or point the claims callback (hydra.callbacks.claims.deeper / shallower / "
                             "with_dropout / without_dropout) at models of the run")


@dataclass
class Job:
    """One finished job of the sweep: its seed, directory and config."""

    seed: int
    path: Path
    cfg: Any


def find_jobs(sweep_dir: str | Path) -> list[Job]:
    """Finished jobs (``metrics.json`` and ``attack/summary.csv`` present) sorted by seed; ValueError when two
    share a seed (the claims sweep varies the seed only)."""
    jobs = []
    for d in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()):
        cfg_file = d / ".hydra" / "config.yaml"
        if not cfg_file.is_file():
            continue
        if not (d / "metrics.json").is_file() or not (d / "attack" / "summary.csv").is_file():
            log.warning("claims: job %s did not finish (no metrics.json or attack/summary.csv): left out", d)
            continue
        cfg = OmegaConf.load(cfg_file)
        jobs.append(Job(int(cfg.seed), d, cfg))
    seeds = [j.seed for j in jobs]
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ValueError(f"jobs in {sweep_dir} share seeds {dup}: a claims sweep varies only the seed "
                         "(hydra.sweeper.params.seed)")
    return sorted(jobs, key=lambda j: j.seed)


def paper_eps_255(cfg: Any) -> float:
    """``attack.figure_eps`` on the 0-255 scale (the eps of the paper's headline numbers)."""
    return float(cfg.attack.figure_eps) / float(cfg.attack.scale) * 255


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def job_numbers(job: Job) -> pd.DataFrame:
    """The headline numbers of one job, long: ``KEY_COLUMNS`` + ``value``."""
    rows: list[dict[str, Any]] = []

    def add(group: str, name: str, eps: float, eps_255: float, metric: str, value: Any) -> None:
        rows.append({"group": group, "name": name, "eps": float(eps), "eps_255": float(eps_255), "metric": metric,
                     "value": float(value)})

    metrics = json.loads((job.path / "metrics.json").read_text())
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "train" and parts[2] == "test_acc":
            add("train", parts[1], math.nan, math.nan, "test_acc", value)
    for r in pd.read_csv(job.path / "attack" / "summary.csv").itertuples(index=False):
        for m in ATTACK_METRICS:
            add("attack", r.model, r.eps, r.eps_255, m, getattr(r, m))
    paired = _read_csv(job.path / "attack" / "paired.csv")
    for r in [] if paired is None else paired.itertuples(index=False):
        add("paired", f"{r.model_a}-vs-{r.model_b}", r.eps, r.eps_255, f"{r.metric}_diff", r.diff)
    transfer = _read_csv(job.path / "attack" / "transfer.csv")
    gaps = _read_csv(job.path / "attack" / "transfer_paired.csv")
    for r in [] if transfer is None else transfer.itertuples(index=False):
        add("transfer", f"{r.source}->{r.target}", r.eps, r.eps * 255, "fooling_rate", r.fooling_rate)
    for r in [] if gaps is None else gaps.itertuples(index=False):
        add("transfer", f"{r.source}->{r.target}", r.eps, r.eps_255, "fooling_rate_gap", r.diff)
    defense = _read_csv(job.path / "defense" / "summary.csv")
    target = job.cfg.get("target_model") or next(iter(job.cfg.model))
    for r in [] if defense is None else defense.to_dict("records"):
        for col, value in r.items():
            if col in ("eps", "eps_255", "n") or col.endswith(("_low", "_high")) or isinstance(value, str):
                continue  # e.g. prior_space: a label, not a number
            add("defense", target, r["eps"], r["eps_255"], col, value)
    fooling = _read_csv(job.path / "fooling" / "summary.csv")
    for r in [] if fooling is None else fooling.itertuples(index=False):
        for m in FOOLING_METRICS:
            add("fooling", f"{r.source}->{r.target}:{r.encoding}", math.nan, math.nan, m, getattr(r, m))
    layers = _read_csv(job.path / "activations" / "layer_change.csv")
    for r in [] if layers is None else layers[(layers["model"] == target) & (layers["category"] == "all")
                                               ].itertuples(index=False):
        add("activations", f"{r.depth:02d}:{r.layer}", r.eps, r.eps_255, "rel_change_mean", r.rel_change_mean)
    return pd.DataFrame(rows, columns=list(KEY_COLUMNS) + ["value"])


def value_range(metric: str) -> tuple[float, float] | None:
    """The range a number can take, by its metric name: differences of rates in [-1, 1], rates,
    accuracies, probabilities, confidences and AUCs in [0, 1], counts >= 0; None (unbounded) otherwise."""
    if metric.endswith(("_diff", "_gap")):
        return (-1.0, 1.0)
    if metric.startswith("n_"):
        return (0.0, math.inf)
    if metric.endswith(("_rate", "_acc", "_auc")) or "prob" in metric or "conf" in metric:
        return (0.0, 1.0)
    return None


def aggregate_numbers(per_seed: Mapping[int, pd.DataFrame], alpha: float = 0.05) -> pd.DataFrame:
    """``NUMBER_COLUMNS`` with ``seed_<s>`` columns from ``{seed: job_numbers(...)}`` (a number missing in a
    job is NaN there). Rows keep the first job's order."""
    long = pd.concat([df.assign(seed=s) for s, df in per_seed.items()], ignore_index=True)
    # eps as text, so that NaN (train rows) is a key like any other and float noise cannot split a row
    long["key_eps"] = long["eps"].map(lambda e: "" if math.isnan(e) else f"{e:.10g}")
    keys = ["group", "name", "key_eps", "metric"]
    wide = long.pivot_table(index=keys, columns="seed", values="value", aggfunc="first", dropna=False, sort=False)
    first = long.drop_duplicates(keys).set_index(keys)[["eps", "eps_255"]]
    seeds = sorted(per_seed)
    wide = wide.reindex(index=first.index, columns=seeds)
    records = []
    for key, vals in wide.iterrows():
        ci = t_interval(vals.to_numpy(dtype=float), alpha=alpha, bounds=value_range(key[3]))
        finite = vals.dropna().to_numpy(dtype=float)
        rec = {"group": key[0], "name": key[1], "eps": first.loc[key, "eps"], "eps_255": first.loc[key, "eps_255"],
               "metric": key[3]}
        rec.update({f"seed_{s}": float(vals[s]) for s in seeds})
        sd = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
        rec.update({"n_seeds": ci.n, "mean": ci.estimate, "sd": sd,
                    "low": ci.low, "high": ci.high})
        records.append(rec)
    cols = list(KEY_COLUMNS) + [f"seed_{s}" for s in seeds] + list(NUMBER_COLUMNS[len(KEY_COLUMNS):])
    return pd.DataFrame.from_records(records, columns=cols).astype({"n_seeds": "int64"})


def judge(low: float, high: float, n_seeds: int, side: str, reference: float) -> str:
    """The verdict of one comparison from its across-seed interval (see the module docstring)."""
    if n_seeds < 2 or math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if side == "below":
        return SUPPORTED if high < reference else CONTRADICTED if low > reference else INCONCLUSIVE
    if side == "above":
        return SUPPORTED if low > reference else CONTRADICTED if high < reference else INCONCLUSIVE
    if side == "at_least":
        return SUPPORTED if low >= reference else CONTRADICTED if high < reference else INCONCLUSIVE
    raise ValueError(f"side must be below, above or at_least, got {side!r}")


def combine(verdicts: Sequence[str]) -> str:
    """A claim's verdict from its comparisons': all supported -> supported; some contradicted and none
    supported -> contradicted; else (mixed, or all inconclusive, or none) inconclusive."""
    if verdicts and all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if CONTRADICTED in verdicts and SUPPORTED not in verdicts:
        return CONTRADICTED
    return INCONCLUSIVE


def _per_seed_paired(jobs: Sequence[Job], a: str, b: str, metric: str, eps_255: float) -> dict[int, dict]:
    """Per seed: the paired difference a - b (sign flipped when the job stored b - a) with its interval."""
    out: dict[int, dict] = {}
    for job in jobs:
        p = _read_csv(job.path / "attack" / "paired.csv")
        if p is None:
            continue
        p = p[(p.metric == metric) & np.isclose(p.eps_255, eps_255)]
        fwd, rev = p[(p.model_a == a) & (p.model_b == b)], p[(p.model_a == b) & (p.model_b == a)]
        if len(fwd):
            r = fwd.iloc[0]
            out[job.seed] = {"diff": float(r["diff"]), "low": float(r.diff_low), "high": float(r.diff_high),
                             "n": int(r.n)}
        elif len(rev):
            r = rev.iloc[0]
            out[job.seed] = {"diff": -float(r["diff"]), "low": -float(r.diff_high), "high": -float(r.diff_low),
                             "n": int(r.n)}
    return out


def _per_seed_mitigation(jobs: Sequence[Job], eps_255: float) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for job in jobs:
        d = _read_csv(job.path / "defense" / "summary.csv")
        if d is None or "mitigation_rate" not in d:
            continue
        d = d[np.isclose(d.eps_255, eps_255)]
        if len(d):
            r = d.iloc[0]
            out[job.seed] = {"rate": float(r.mitigation_rate), "low": float(r.mitigation_rate_low),
                             "high": float(r.mitigation_rate_high), "n": int(r.n_high_conf)}
    return out


def _comparison(name: str, per_seed: dict[int, dict], value_key: str, side: str, reference: float,
                alpha: float, metric: str, **extra: Any) -> dict[str, Any]:
    ci = t_interval(np.array([v[value_key] for v in per_seed.values()], dtype=float), alpha=alpha,
                    bounds=value_range(metric))
    return {"comparison": name, "metric": metric, **extra, "side": side, "reference": reference, "per_seed": per_seed,
            "n_seeds": ci.n, "mean": ci.estimate, "low": ci.low, "high": ci.high,
            "verdict": judge(ci.low, ci.high, ci.n, side, reference)}


def judge_claims(jobs: Sequence[Job], spec: ClaimSpec) -> list[dict[str, Any]]:
    """One entry per (claim, eps): its verdict and evidence (each comparison's per-seed values with their
    within-seed intervals, the across-seed mean and interval, and the comparison's verdict)."""
    summary = pd.concat([pd.read_csv(j.path / "attack" / "summary.csv") for j in jobs])
    eps_pairs = summary.drop_duplicates("eps_255").sort_values("eps_255")[["eps", "eps_255"]]
    paper = paper_eps_255(jobs[0].cfg)
    target = jobs[0].cfg.get("target_model") or next(iter(jobs[0].cfg.model))
    claims = []
    for eps_px, eps in eps_pairs.itertuples(index=False):
        common = {"eps_255": float(eps), "eps": float(eps_px), "paper_eps": bool(np.isclose(eps, paper))}
        depth = [_comparison(f"{spec.deeper}-vs-{s}", _per_seed_paired(jobs, spec.deeper, s, spec.metric, eps), "diff",
                             "below", 0.0, spec.alpha, model_a=spec.deeper, model_b=s, metric=f"{spec.metric}_diff")
                 for s in spec.shallower]
        drop = [_comparison(f"{spec.with_dropout}-vs-{spec.without_dropout}",
                            _per_seed_paired(jobs, spec.with_dropout, spec.without_dropout, spec.metric, eps), "diff",
                            "above", 0.0, spec.alpha, model_a=spec.with_dropout, model_b=spec.without_dropout,
                            metric=f"{spec.metric}_diff")]
        mit = [_comparison(f"{target} + prior", _per_seed_mitigation(jobs, eps), "rate", "at_least",
                           spec.mitigation, spec.alpha, metric="mitigation_rate")]
        for cid, text, evidence in (
            ("depth", "Deeper nets are less susceptible to FGSM", depth),
            ("dropout", "Dropout lowers robustness to FGSM", drop),
            ("mitigation", f"The prior mitigates {spec.mitigation:.0%} of high-confidence adversarial examples", mit),
        ):
            claims.append({"claim": cid, "text": text, **common,
                           "verdict": combine([c["verdict"] for c in evidence]), "evidence": evidence})
    return claims


def verdict_table(claims: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``VERDICT_COLUMNS``: the claims flattened, one row per comparison."""
    rows = [{"claim": c["claim"], "eps": c["eps"], "eps_255": c["eps_255"], "paper_eps": c["paper_eps"],
             **{k: e[k] for k in ("comparison", "metric", "side", "reference", "n_seeds", "mean", "low", "high")},
             "comparison_verdict": e["verdict"], "verdict": c["verdict"]}
            for c in claims for e in c["evidence"]]
    return pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))


def rule_text(spec: ClaimSpec) -> str:
    """The verdict rule in words (it goes into claims.json and the README)."""
    level = f"{1 - spec.alpha:.0%}"
    return (f"Per comparison, across training seeds: supported when the Student-t {level} interval of the per-seed "
            f"values lies entirely on the claimed side of the reference (a paired difference on the same images below "
            f"or above 0; a mitigation rate at or above {spec.mitigation:g}), contradicted when it lies entirely on "
            "the other side, inconclusive when it contains the reference or fewer than two seeds give a value. A "
            "claim is supported when all its comparisons are, contradicted when one is and none supports it, "
            "inconclusive otherwise. The headline verdict is the one at the paper's eps.")


def aggregate(sweep_dir: str | Path, spec: ClaimSpec | None = None) -> dict[str, Any]:
    """``{"numbers": DataFrame, "claims": [...], "seeds": [...], "paper_eps_255": float, "target_model": str, ...}``
    of a claims sweep.

    ValueError when no job finished or the jobs lack a model the claims compare.
    """
    spec = spec or ClaimSpec()
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise ValueError(f"no finished job in {sweep_dir}: nothing to aggregate (run `advprior experiment=claims`)")
    for job in jobs:
        spec.check_models(list(job.cfg.model))
    numbers = aggregate_numbers({j.seed: job_numbers(j) for j in jobs}, alpha=spec.alpha)
    target = jobs[0].cfg.get("target_model") or next(iter(jobs[0].cfg.model))
    return {"numbers": numbers, "claims": judge_claims(jobs, spec), "seeds": [j.seed for j in jobs],
            "paper_eps_255": paper_eps_255(jobs[0].cfg), "alpha": spec.alpha, "rule": rule_text(spec),
            "target_model": str(target)}


def _json_safe(x: Any) -> Any:
    """NaN -> None, numpy scalars -> Python, dict keys -> str, recursively (strict JSON)."""
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write(result: Mapping[str, Any], sweep_dir: str | Path, extra: Mapping[str, Any] | None = None) -> None:
    """``claims.csv`` (numbers), ``verdicts.csv`` and ``claims.json`` (everything, plus ``extra``, e.g. the
    machine) in ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    save_csv(result["numbers"], sweep_dir / "claims.csv")
    save_csv(verdict_table(result["claims"]), sweep_dir / "verdicts.csv")
    payload = {k: v for k, v in result.items() if k != "numbers"}
    payload["numbers"] = result["numbers"].to_dict("records")
    payload.update(extra or {})
    save_json(_json_safe(payload), sweep_dir / "claims.json")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m advprior.analysis.claims SWEEP_DIR``: aggregate a claims sweep's finished jobs again (e.g.
    after more jobs finished, or when the sweep's own aggregation failed); the default claim settings."""
    import argparse

    from ..utils.machine import machine_info

    ap = argparse.ArgumentParser(prog="python -m advprior.analysis.claims", description=main.__doc__)
    ap.add_argument("sweep_dir", type=Path, help="the sweep directory of `advprior experiment=claims`")
    args = ap.parse_args(argv)
    try:
        result = aggregate(args.sweep_dir)
    except ValueError as e:
        ap.error(str(e))
    write(result, args.sweep_dir, extra={"machine": machine_info(), "sweep_seconds": None})
    for c in result["claims"]:
        if c["paper_eps"]:
            print(f"{c['text']}: {c['verdict']}")
    print(f"{len(result['seeds'])} seeds -> {args.sweep_dir / 'claims.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
