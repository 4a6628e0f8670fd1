"""``report.html``: one self-contained page per run (figures embedded as base64 PNG, CSS inline, no URL).

``build_report(run_dir)`` reads only what the stages stored (``RunData``) and renders the Jinja2 templates
in ``advprior/report/templates``; the same stored files give the same bytes (no time of the build inside).
"""
from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ..utils.io import atomic_write
from .headlines import Headline, headline_rows
from .rundata import CONFIG_FILE, RunData
from .tables import Table, frame_table, mapping_table, pivot_metrics

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
MAX_ROWS = 40  # per-image tables (fooling scores, activation examples) are cut to this many rows


@dataclass
class Figure:
    title: str
    data_uri: str


@dataclass
class Section:
    """One stage's part of the report."""

    id: str
    nav: str       # the short name in the page's navigation bar
    title: str
    intro: str
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.tables and not self.figures


def environment() -> Environment:
    return Environment(loader=PackageLoader("advprior.report", "templates"), undefined=StrictUndefined,
                       autoescape=select_autoescape(["html", "j2"]), keep_trailing_newline=True,
                       trim_blocks=True, lstrip_blocks=True)


def png_data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure_list(paths: list[Path], stage: str) -> list[Figure]:
    return [Figure(p.stem[len(stage) + 1:].replace("_", " "), png_data_uri(p)) for p in paths]


# ----------------------------------------------------------------------------- one function per stage

def train_section(run: RunData) -> Section:
    s = Section("train", "Models", "Models", "The models of this run: trained here (on the training split) or loaded "
                "frozen; accuracy on the test split.")
    df = pivot_metrics(run.metrics, "train")
    if df is not None:
        s.tables.append(frame_table(df, "Training"))
    s.figures = figure_list(run.figures("train"), "train")
    return s


def attack_section(run: RunData) -> Section:
    s = Section("attack", "FGSM study", "FGSM study (paper sections 4.1, 4.3, 4.4)",
                "FGSM on every model's evaluation images, eps in [0,1] pixel units shown on the 0-255 scale. "
                "Rates with 95% bootstrap intervals. label_changed_rate: adversarial top-1 differs from the clean "
                "top-1; high_conf_rate: label changed with adversarial top-1 probability > 0.5; fooling_rate: label "
                "changes among correctly classified images.")
    summary = run.table("attack/summary.csv")
    if summary is not None:
        s.tables.append(frame_table(summary, "Rates per model and eps (attack/summary.csv)",
                                    ["model", "eps_255", "n", "clean_acc", "adv_acc", "label_changed_rate",
                                     "high_conf_rate", "fooling_rate", "mean_second_prob_high_conf"]))
    paired = run.table("attack/paired.csv")
    if paired is not None:
        s.tables.append(frame_table(paired, "Paired comparisons (attack/paired.csv)",
                                    ["model_a", "model_b", "eps_255", "metric", "a", "b", "diff", "n", "method"],
                                    note="diff = a - b with its paired 95% interval."))
    cats = run.table("attack/categories.csv")
    if cats is not None:
        cats = cats.assign(eps_255=cats["eps"] * 255) if "eps" in cats else cats
        s.tables.append(frame_table(cats, "Categories (paper section 4.3; attack/categories.csv)",
                                    ["model", "eps_255", "true", "refocused", "conatural", "benign", "wrong_to_wrong",
                                     "unchanged"], note="Counts of images; every image is in exactly one category."))
    transfer = run.table("attack/transfer.csv")
    if transfer is not None:
        transfer = transfer.assign(eps_255=transfer["eps"] * 255)
        s.tables.append(frame_table(transfer, "Transfer: examples crafted on the source, scored by the target "
                                    "(attack/transfer.csv)", ["source", "target", "eps_255", "n_correct",
                                                              "fooling_rate", "adv_acc", "mean_confidence"]))
    s.figures = figure_list(run.figures("attack"), "attack")
    return s


def prior_section(run: RunData) -> Section:
    s = Section("prior", "Prior", "Bayesian prior (paper section 6)", "fc6 features of the support images -> per-class "
                "PCA -> per-class autoencoder -> per-class Gaussian KDE of the codes: p(r | y, x).")
    values = {k.split("/", 1)[1]: v for k, v in run.metrics.items() if k.startswith("prior/")}
    if values:
        s.tables.append(mapping_table(values, "The fitted prior"))
    s.figures = figure_list(run.figures("prior"), "prior")
    return s


DEFENSE_BASE = ["eps_255", "n", "base_clean_acc", "post_clean_acc", "base_adv_acc", "post_adv_acc", "n_high_conf",
                "mitigation_rate", "recovery_rate", "n_detector_adv", "detector_auc"]


def defense_section(run: RunData) -> Section:
    s = Section("defense", "Defense", "Defense: posterior ∝ p(y|x) p(r|y,x) (paper section 7)",
                "The base model and the posterior on clean images and on FGSM examples crafted against the base "
                "model (the paper's setting). mitigation_rate: among high-confidence adversarial examples, the share "
                "whose posterior top-1 is no longer the adversarial label; recovery_rate: the share back at the true "
                "label. Adaptive attacks are computed through the posterior itself (white box).")
    df = run.table("defense/summary.csv")
    if df is not None:
        s.tables.append(frame_table(df, "Non-adaptive FGSM (defense/summary.csv)", DEFENSE_BASE))
        adaptive = [c for c in df.columns if c.startswith("adaptive_") and not c.endswith(("_low", "_high"))]
        if adaptive:
            s.tables.append(frame_table(df, "Adaptive attacks: accuracy under attack",
                                        ["eps_255", *adaptive, "pgd_base_acc", "base_adv_acc"],
                                        note="adaptive_*: the posterior under an attack through the posterior; "
                                             "pgd_base_acc: the base model under the same PGD; base_adv_acc: the "
                                             "base model under FGSM."))
    s.figures = figure_list(run.figures("defense"), "defense")
    return s


def fooling_section(run: RunData) -> Section:
    s = Section("fooling", "Fooling images", "Fooling images (paper section 4.2)", "Images evolved (CPPN or direct encoding) to be "
                "classified with high confidence by the source model, scored by every model.")
    df = run.table("fooling/summary.csv")
    if df is not None:
        s.tables.append(frame_table(df, "Across models (fooling/summary.csv)"))
    scores = run.table("fooling/scores.csv")
    if scores is not None:
        s.tables.append(frame_table(scores, "Per image (fooling/scores.csv)", max_rows=MAX_ROWS))
    s.figures = figure_list(run.figures("fooling"), "fooling")
    return s


def activations_section(run: RunData) -> Section:
    s = Section("activations", "Activations", "Activation differences (paper section 5)", "Relative change of each layer's "
                "activations between an image and its adversarial example, by depth.")
    df = run.table("activations/layer_change.csv")
    if df is not None:
        s.tables.append(frame_table(df, "Relative change per layer (activations/layer_change.csv)",
                                    note="rel_change: ||a(x_adv) - a(x)|| / ||a(x)||, mean over images."))
    ex = run.table("activations/examples.csv")
    if ex is not None:
        s.tables.append(frame_table(ex, "Examples (activations/examples.csv)", max_rows=MAX_ROWS))
    s.figures = figure_list(run.figures("activations"), "activations")
    return s


STAGE_SECTIONS = {"train": train_section, "attack": attack_section, "prior": prior_section,
                  "defense": defense_section, "fooling": fooling_section, "activations": activations_section}


def other_figures(run: RunData) -> Section:
    """Figures of stages this report has no section for (``figures/<stage>_*.png``)."""
    s = Section("other", "Other figures", "Other figures", "")
    for p in sorted((run.run_dir / "figures").glob("*.png")):
        if p.stem.split("_", 1)[0] not in STAGE_SECTIONS:
            s.figures.append(Figure(p.stem.replace("_", " "), png_data_uri(p)))
    return s


# ----------------------------------------------------------------------------- the page

def config_text(run: RunData) -> str:
    for rel in (CONFIG_FILE, ".hydra/config.yaml", "config_tree.txt"):
        if (run.run_dir / rel).is_file():
            return (run.run_dir / rel).read_text()
    return "(no config stored in this run directory)"


def environment_tables(run: RunData) -> list[Table]:
    m = run.machine
    if not m:
        return [Table("Machine", ["", ""], [["not recorded", f"{run.run_dir.name} has no machine.json"]])]
    machine = {k: m.get(k) for k in ("cpu", "cpu_capability", "cores", "memory_gib", "gpu", "python", "platform")}
    machine["gpu"] = machine["gpu"] or "none"
    versions = {k: v or "not installed" for k, v in (m.get("versions") or {}).items()}
    return [mapping_table(machine, "Machine", "item"), mapping_table(versions, "Package versions", "package")]


def timing_table(run: RunData) -> Table | None:
    # The report's own time is recorded after the report is written: leaving it out keeps rebuilds identical.
    stored = {k: v for k, v in run.stage_seconds().items() if k != "report"}
    order = [s for s in STAGE_SECTIONS if s in stored] + sorted(s for s in stored if s not in STAGE_SECTIONS)
    secs = {s: stored[s] for s in order}
    if not secs:
        return None
    t = Table("Time per stage", ["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in secs.items()],
              numeric=[False, True])
    t.rows.append(["total", f"{sum(secs.values()):.1f}"])
    return t


def report_context(run: RunData, headlines: list[Headline]) -> dict[str, Any]:
    sections = [fn(run) for fn in STAGE_SECTIONS.values()]
    sections.append(other_figures(run))
    cfg = run.config
    return {
        "title": f"advprior report: {cfg.get('task_name', 'run')}",
        "run_name": run.run_dir.name,
        "facts": {
            "data": str((cfg.get("data") or {}).get("_target_", "?")).rsplit(".", 1)[-1],
            "models": ", ".join(run.models) or "?",
            "target model": run.target_model or "?",
            "seed": cfg.get("seed", "?"),
            "paper eps": f"{run.paper_eps_255:g}/255",
        },
        "headlines": headlines,
        "sections": [s for s in sections if not s.empty],
        "config_text": config_text(run),
        "env_tables": environment_tables(run),
        "timing": timing_table(run),
    }


def render_report(run_dir: str | Path) -> str:
    run = RunData(Path(run_dir))
    return environment().get_template("report.html.j2").render(**report_context(run, headline_rows(run)))


def build_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) from the run's stored results; returns its path."""
    html = render_report(run_dir)
    path = atomic_write(Path(run_dir) / REPORT_FILE, lambda p: p.write_text(html, encoding="utf-8"))
    log.debug("report: %s (%.0f KiB)", path, path.stat().st_size / 1024)
    return path

