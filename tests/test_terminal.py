"""A quiet terminal: one line per stage start and end, no warning from our code or our configuration of a
library, the config tree only when asked, and a closing table of the headline results with the report's path."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tiny_run import run_cli, tiny_run

# Warnings raised inside a library about its own internals, that no setting of ours can avoid: (regex, why).
# Empty: the known ones are silenced at their source (advprior.utils.quiet.KNOWN_WARNINGS, with reasons).
ALLOWED_WARNINGS: tuple[tuple[str, str], ...] = ()
LIBRARY_NOISE = ("Tip:", "litlogger", "GPU available", "TPU available", "LOCAL_RANK", "Trainer.fit", "LeafSpec",
                 "anonymous setting", "wandb:")


def warning_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(r"warn|deprecat", line, re.I)
            and not any(re.search(p, line) for p, _ in ALLOWED_WARNINGS)]


def check_quiet(stdout: str, stderr: str, run_dir: Path, stages: list[str]) -> None:
    assert warning_lines(stdout + "\n" + stderr) == []
    assert stderr.strip() == "", stderr[-3000:]
    for noise in LIBRARY_NOISE:
        assert noise not in stdout, noise
    assert "CONFIG" not in stdout  # the tree is saved, not printed (extras.print_config=false)
    lines = stdout.splitlines()
    stage_lines = [line for line in lines if re.match(r"\[\d\d:\d\d:\d\d\] stage ", line)]
    expected = [x for s in stages for x in (f"stage {s}: start", f"stage {s}: done in")]
    assert [re.sub(r"^\[[\d:]+\] (stage \w+: (start|done in)).*", r"\1", line) for line in stage_lines] == expected
    # everything else: the run directory first, then the closing table ending with the report's path
    table_start = next(i for i, line in enumerate(lines) if "What this run found" in line)
    assert lines[0].endswith(f"run directory: {run_dir}")
    assert set(lines[1:table_start]) == set(stage_lines)
    assert lines[-1] == f"Report: {run_dir / 'report.html'}"


def test_tiny_run_prints_stage_lines_and_the_closing_table(tmp_path_factory):
    r = tiny_run(tmp_path_factory)
    check_quiet(r.stdout, r.stderr, r.run_dir, ["train", "attack", "prior", "defense", "fooling", "activations", "report"])
    table = r.stdout[r.stdout.index("What this run found"):]
    assert re.search(r"high-confidence adversarial examples, shallow, eps 0\.85/255 +\d+\.\d% \[\d+\.\d, \d+\.\d\]",
                     table)
    assert "mitigation rate, eps 8/255" in table and "posterior accuracy under adaptive PGD" in table
    # the full log keeps what the console leaves out; the config is in the run directory
    log = (r.run_dir / "run.log").read_text()
    assert "model shallow: test acc" in log and "stage defense: done" in log
    assert (r.run_dir / "config_tree.txt").read_text().startswith("CONFIG")
    cfg = yaml.safe_load((r.run_dir / "config.yaml").read_text())
    assert cfg["attack"]["epsilons"] == [0.85, 8] and "hydra" not in cfg
    assert "${" not in (r.run_dir / "config.yaml").read_text()  # resolved


def test_print_config_prints_the_tree(make_cfg, caplog):
    from advprior.cli import run_task

    caplog.set_level("INFO", logger="advprior")
    run_task(make_cfg(["stages=[train]", "model=[shallow]", "extras.print_config=true"]))
    assert "config:\nCONFIG" in caplog.text
    caplog.clear()
    run_task(make_cfg(["stages=[train]", "model=[shallow]"]))
    assert "CONFIG" not in caplog.text and "stage train: done" in caplog.text


def test_a_resumed_run_keeps_the_earlier_csv_logs(make_cfg):
    """Lightning's CSV logger warns and deletes its directory's logs when it is reused (a resumed run):
    the earlier logs move to csv.1 instead."""
    import warnings

    from advprior.cli import run_task

    cfg = make_cfg(["stages=[train]", "model=[shallow]"])
    run_task(cfg)
    run = Path(cfg.paths.output_dir)
    first = (run / "csv" / "metrics.csv").read_text()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_task(make_cfg(["stages=[train]", "model=[shallow]"]))
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]
    assert (run / "csv.1" / "metrics.csv").read_text() == first and (run / "csv" / "metrics.csv").is_file()


@pytest.mark.slow
def test_the_default_debug_run_is_quiet(tmp_path):
    """``advprior debug=fast``: the default models, loggers and stages."""
    r = run_cli(tmp_path, ["debug=fast"])
    assert r.returncode == 0, r.stderr[-3000:]
    check_quiet(r.stdout, r.stderr, r.run_dir, ["train", "attack", "prior", "defense", "fooling", "activations", "report"])


def test_progress_yields_every_item_with_or_without_a_terminal(monkeypatch):
    import io

    from rich.console import Console

    from advprior.utils import progress as p

    monkeypatch.setattr(p, "_enabled", True)  # an earlier run_task (debug=fast) may have switched bars off
    batches = [(list(range(n)), n) for n in (3, 5, 2)]
    assert list(p.progress(iter(batches), total=10, desc="x", unit="img", count=p.batch_images)) == batches
    out = io.StringIO()
    monkeypatch.setattr(p, "Console", lambda stderr=True: Console(file=out, force_terminal=True, width=120))
    assert list(p.progress(iter(batches), total=10, desc="scoring", unit="img", count=p.batch_images)) == batches
    assert "scoring" in out.getvalue() and "img/s" in out.getvalue()
    assert p.lightning_progress(True)["enable_progress_bar"] is True
    p.configure(False)
    assert p.lightning_progress(True) == {"enable_progress_bar": False, "callbacks": []}
