"""Every command README.md shows, run as written: a README command that fails, or one this file does not know
how to run, fails the suite.

Commands are (a) each line of each fenced ```bash block (lines ending in ``\\`` joined, trailing ``# comments``
and blank lines dropped) and (b) each inline code span outside fenced blocks whose first word is make,
advprior, advprior-report, python, wandb, source or pytest. ```python and unlabelled blocks hold no commands.
A command shown several times is one case (its first line names it). ``FORMS`` says how each kind of command
runs; a command that matches no form fails with "README line N shows a command this test does not know how
to run". Each runs in a fresh directory with cwd = HOME = ADVPRIOR_ROOT = that directory (so W&B, the torch
hub cache and every output stay there), ``python`` as this interpreter and ``PYTHONPATH=<repo>/src``.

The tiny-size suffix: every ``advprior`` command runs as written with ``debug=fast logger=[csv]`` appended
(Hydra: later overrides win). Other substitutions, and nothing else:

- ImageNet: ``data.root=/data/imagenet`` -> a generated ImageNet tree (``tests/imagenet_fixture.py``, 5 classes,
  6 training and 6 validation images each) with random-weight VGG-19 and AlexNet at 64x64, as
  tests/test_imagenet_pipeline.py and tests/test_fooling_imagenet.py run it: ``IMAGENET_OVERRIDES`` appended,
  less any key the command sets itself (the prior's sizes fit 6 support images per class).
- GPUs: a command with ``trainer.devices=N`` and no ``trainer.accelerator=cpu`` gets ``trainer.accelerator=cpu
  trainer.devices=2`` appended (two gloo processes); ``trainer.precision=bf16-mixed`` stays (it runs on CPU).
- ``logs/run/runs/<date>_<time>`` -> the session's tiny run (tests/tiny_run.py; ``advprior-report`` runs on a
  copy); ``wandb sync <that>/wandb/offline-run-*`` needs the network, so only its glob is checked: it must
  name offline W&B run directories holding a ``.wandb`` file.
- ``python scripts/readme_results.py <sweep dir>`` -> run on a 2-seed claims sweep (``advprior
  experiment=claims seed=0,1 debug=fast logger=[csv]``); every ``--readme README.md``
  (also via ``make bench BENCH_ARGS=...``) writes to a copy of README.md, never the README itself.
- ``make run [ARGS=...]`` is the venv set-up plus ``advprior ARGS``: runs ``advprior ARGS`` + suffix.
  ``make bench [BENCH_ARGS=...]`` and ``python scripts/bench_*.py`` / ``cpu_variation.py`` run with ``--quick``
  (``make bench`` also with ``--out-dir`` in the fresh directory).
- ``make test``, ``make test-all`` and ``pytest ...`` are this suite: skipped with that reason (never passed).
  ``source .venv/bin/activate``: the file must exist when the repository has a ``.venv``, else skipped.

A multirun (``advprior -m ...``, or an experiment whose config sets it) must write one sweep directory under
``logs/<task>/multiruns/`` with a job directory and a ``summary.csv`` row per job (swept values in its columns);
a single run one ``logs/<task>/runs/<date>_<time>/`` with ``metrics.json``. ``advprior -m`` commands are in the
default suite, every other long one is ``slow``.
"""
from __future__ import annotations

import functools
import math
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import ROOT
from hydra.core.override_parser.overrides_parser import OverridesParser
from tiny_run import clean_env, tiny_run

from advprior.utils.readme import read_block

try:
    from imagenet_fixture import make_fake_imagenet
except ImportError:  # tests/ imported as a package
    from tests.imagenet_fixture import make_fake_imagenet

README = ROOT / "README.md"
SUFFIX = ["debug=fast", "logger=[csv]"]
IMAGENET_OVERRIDES = [
    "data.image_size=64", "data.resize_size=73", "data.num_workers=0", "model.vgg19.weights=null",
    "model.alexnet.weights=null", "data.support_per_class=6", "prior.support_per_class=6", "prior.n_components=3",
    "prior.bottleneck=2",
]
CPU_DEVICES = ["trainer.accelerator=cpu", "trainer.devices=2"]
CLAIMS_SWEEP = ["experiment=claims", "seed=0,1"]  # the command line's sweep replaces the config's seeds 0-4
COMMAND_WORDS = {"make", "advprior", "advprior-report", "python", "wandb", "source", "pytest"}
TIMEOUT = 1800  # seconds per command (the slowest, experiment=claims, runs 5 seeds)


# ------------------------------------------------------------------------------------------- extraction
@dataclass(frozen=True)
class Command:
    text: str
    line: int  # 1-based README line where it starts
    also: tuple[int, ...] = ()  # further lines showing the same command

    @property
    def where(self) -> str:
        if not self.line:
            return "a fixture of tests/test_readme_commands.py"
        more = f" (also line{'s' if len(self.also) > 1 else ''} {', '.join(map(str, self.also))})" if self.also else ""
        return f"README line {self.line}{more}"


def strip_comment(line: str) -> str:
    """``line`` without a shell comment: a ``#`` starting a word outside quotes, and what follows it."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


FENCE = re.compile(r"^\s*(```+|~~~+)\s*([^\s`]*)")
SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)


def extract_commands(markdown: str) -> list[Command]:
    """The commands in ``markdown`` (see the module docstring), in order, each distinct text once."""
    found: list[tuple[int, int, str]] = []  # (line, column, command)
    prose = []  # the text outside fenced blocks, fenced lines blanked (keeps line numbers)
    fence, info, pending, start = None, "", "", 0
    for n, line in enumerate(markdown.splitlines(), start=1):
        m = FENCE.match(line)
        if fence is None and m:
            fence, info = m.group(1), m.group(2).lower()
            prose.append("")
            continue
        if fence is not None:
            prose.append("")
            if m and m.group(1).startswith(fence) and not m.group(2):
                fence = None
                continue
            if info not in ("bash", "sh", "shell", "console"):
                continue
            if not pending:
                start = n
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            text = " ".join(strip_comment(pending + line).split())
            pending = ""
            if text:
                found.append((start, 0, text))
            continue
        prose.append(line)
    text = "\n".join(prose)
    for m in SPAN.finditer(text):
        span = " ".join(m.group(2).split())
        if span and span.split()[0] in COMMAND_WORDS:
            line = text.count("\n", 0, m.start()) + 1
            found.append((line, m.start() - text.rfind("\n", 0, m.start()), span))
    commands: dict[str, Command] = {}
    for line, _, cmd in sorted(found, key=lambda f: f[:2]):
        if cmd in commands:
            c = commands[cmd]
            commands[cmd] = Command(c.text, c.line, c.also + (line,))
        else:
            commands[cmd] = Command(cmd, line)
    return list(commands.values())


# --------------------------------------------------------------------------------------------- running
class ReadmeCommandError(AssertionError):
    """A README command failed, or the README shows a command this file cannot run."""


@dataclass
class Ctx:
    fresh: Callable[[], Path]  # a new empty directory
    fixture: Callable[[str], Any]  # a pytest fixture's value by name (request.getfixturevalue)


_done: dict[tuple[str, ...], Path] = {}  # argv -> its output directory: a command shown twice runs once


def _run(cmd: Command, argv: list[str], root: Path) -> subprocess.CompletedProcess:
    """``argv`` with cwd = HOME = ADVPRIOR_ROOT = ``root``; ReadmeCommandError with its output if it fails."""
    proc = subprocess.run(argv, cwd=root, env=clean_env(root, root), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    if proc.returncode:
        shown = " ".join(shlex.quote(str(a)) for a in argv[1:])
        raise ReadmeCommandError(
            f"{cmd.where}: `{cmd.text}` failed (exit status {proc.returncode}), run as `python {shown}` with "
            f"cwd = HOME = ADVPRIOR_ROOT = {root}:\n{proc.stderr[-4000:]}\n{proc.stdout[-1500:]}")
    return proc


def _sweep_values(args: list[str], hydra_cfg: dict) -> dict[str, list[str]]:
    """Each swept key's values: the command's sweep overrides, then the sweep's ``hydra.sweeper.params``."""
    parser = OverridesParser.create()
    swept = {o.key_or_group: list(o.sweep_string_iterator())
             for o in parser.parse_overrides([a for a in args if not a.startswith("-")])
             if o.is_sweep_override() and not o.key_or_group.startswith("hydra")}
    params = hydra_cfg["sweeper"].get("params") or {}
    for key, values in params.items():
        if key not in swept:
            o = parser.parse_override(f"{key}={values}")
            swept[key] = list(o.sweep_string_iterator()) if o.is_sweep_override() else [str(values)]
    return swept


def _check_outputs(cmd: Command, args: list[str], root: Path) -> Path:
    sweeps = sorted((root / "logs").glob("*/multiruns/*"))
    runs = sorted((root / "logs").glob("*/runs/*"))
    if "-m" in args or "--multirun" in args or sweeps:
        assert len(sweeps) == 1 and not runs, f"{cmd.where}: `{cmd.text}`: expected one sweep directory, got {sweeps + runs}"
        sweep = sweeps[0]
        hydra_cfg = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]
        swept = _sweep_values(args, hydra_cfg)
        jobs = math.prod(len(v) for v in swept.values())
        assert (sweep / "summary.csv").is_file(), f"{cmd.where}: `{cmd.text}`: no summary.csv in {sweep}"
        df = pd.read_csv(sweep / "summary.csv")
        job_dirs = [d for d in sweep.iterdir() if d.is_dir() and d.name.isdigit()]
        assert len(df) == len(job_dirs) == jobs, (
            f"{cmd.where}: `{cmd.text}`: {jobs} jobs ({swept}), {len(job_dirs)} job directories, "
            f"{len(df)} rows in {sweep / 'summary.csv'}")
        for key, values in swept.items():
            if key in df.columns:
                assert sorted(df[key].astype(str)) == sorted(values * (jobs // len(values))), (key, df[key].tolist())
        if "claims" in (hydra_cfg.get("callbacks") or {}):  # experiment=claims: README names its three files
            missing = [f for f in ("claims.csv", "verdicts.csv", "claims.json") if not (sweep / f).is_file()]
            assert not missing, f"{cmd.where}: `{cmd.text}`: the claims sweep {sweep} lacks {missing}"
        return sweep
    assert len(runs) == 1, f"{cmd.where}: `{cmd.text}`: expected one run directory under {root}/logs/*/runs, got {runs}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", runs[0].name), runs[0]
    assert (runs[0] / "metrics.json").is_file(), f"{cmd.where}: `{cmd.text}`: no metrics.json in {runs[0]}"
    return runs[0]


def run_advprior(cmd: Command, ctx: Ctx, args: list[str] | None = None) -> Path:
    """``advprior ARGS`` + the suffix (+ the ImageNet and GPU substitutions); its run or sweep directory."""
    args = shlex.split(cmd.text)[1:] if args is None else args
    extra: list[str] = []
    if "data.root=/data/imagenet" in args:
        fake = ctx.fixture("fake_imagenet")
        args = [f"data.root={fake}" if a == "data.root=/data/imagenet" else a for a in args]
        own = {a.split("=", 1)[0] for a in args}
        extra += [o for o in IMAGENET_OVERRIDES if o.split("=", 1)[0] not in own]
    if any(re.fullmatch(r"trainer\.devices=\d+", a) for a in args) and "trainer.accelerator=cpu" not in args:
        extra += CPU_DEVICES
    argv = [*args, *SUFFIX, *extra]
    if tuple(argv) not in _done:
        root = ctx.fresh()
        proc = _run(cmd, [sys.executable, "-m", "advprior", *argv], root)
        # Hydra turns an exception in a sweep callback (summary, report, claims) into a warning and exits 0
        failed = re.findall(r"Callback \w+\.\w+ raised .*", proc.stderr)
        if failed:
            raise ReadmeCommandError(f"{cmd.where}: `{cmd.text}`, run in {root}: {failed}")
        _done[tuple(argv)] = _check_outputs(cmd, argv, root)
    return _done[tuple(argv)]


def run_make_run(cmd: Command, ctx: Ctx) -> None:
    """``make run ARGS="..."`` = the venv set-up, then ``advprior ...`` (the Makefile's recipe)."""
    words = shlex.split(cmd.text)[2:]
    args = shlex.split(words[0].removeprefix("ARGS=")) if words else []
    run_advprior(cmd, ctx, args)


def _readme_copy(root: Path) -> Path:
    copy = root / "README.md"
    shutil.copyfile(README, copy)
    return copy


def _script_args(args: list[str], root: Path) -> tuple[list[str], Path | None]:
    """``args`` with ``--readme README.md`` pointed at a copy of the README under ``root``."""
    out, copy = list(args), None
    for i, a in enumerate(out[:-1]):
        if a == "--readme":
            assert out[i + 1] == "README.md", f"--readme {out[i + 1]}: only README.md is known here"
            copy = _readme_copy(root)
            out[i + 1] = str(copy)
    return out, copy


def _assert_block_filled(cmd: Command, copy: Path, name: str) -> None:
    assert read_block(copy.read_text(), name).strip(), f"{cmd.where}: `{cmd.text}` left block {name!r} empty"


def run_script(cmd: Command, ctx: Ctx) -> None:
    """``python scripts/NAME.py [ARGS]`` with ``--quick``; a script the README names must exist."""
    words = shlex.split(cmd.text)
    script = ROOT / words[1]
    if not script.is_file():
        raise ReadmeCommandError(f"{cmd.where}: `{cmd.text}`: {words[1]} does not exist in the repository")
    root = ctx.fresh()
    args, copy = _script_args(words[2:], root)
    _run(cmd, [sys.executable, str(script), *args, "--quick"], root)
    if copy is not None and script.stem == "cpu_variation":
        _assert_block_filled(cmd, copy, "cpu-variation")


def run_make_bench(cmd: Command, ctx: Ctx) -> None:
    """``make bench BENCH_ARGS="..."`` = ``python scripts/bench_all.py ...``, here with ``--quick``."""
    words = shlex.split(cmd.text)[2:]
    root = ctx.fresh()
    args, copy = _script_args(shlex.split(words[0].removeprefix("BENCH_ARGS=")) if words else [], root)
    _run(cmd, [sys.executable, str(ROOT / "scripts" / "bench_all.py"), *args, "--quick",
               "--out-dir", str(root / "benchmarks")], root)
    assert (root / "benchmarks" / "results.md").is_file()
    if copy is not None:
        _assert_block_filled(cmd, copy, "benchmarks")


def run_readme_results(cmd: Command, ctx: Ctx) -> None:
    """``python scripts/readme_results.py <sweep dir>`` on the session's 2-seed claims sweep, into a copy."""
    sweep = ctx.fixture("claims_sweep")
    root = ctx.fresh()
    copy = _readme_copy(root)
    words = shlex.split(cmd.text)
    _run(cmd, [sys.executable, str(ROOT / words[1]), str(sweep), "--readme", str(copy)], root)
    assert copy.read_text() != README.read_text(), f"{cmd.where}: `{cmd.text}` changed nothing in the README"
    _assert_block_filled(cmd, copy, "claims")


def run_report(cmd: Command, ctx: Ctx) -> None:
    """``advprior-report <run dir>`` on a copy of the session's tiny run (the report is rewritten in place)."""
    root = ctx.fresh()
    run = shutil.copytree(ctx.fixture("readme_tiny_run").run_dir, root / "run")
    (run / "report.html").unlink(missing_ok=True)
    proc = _run(cmd, [sys.executable, "-m", "advprior.report.cli", str(run)], root)
    assert (run / "report.html").is_file() and str(run / "report.html") in proc.stdout


def check_wandb_sync(cmd: Command, ctx: Ctx) -> None:
    """``wandb sync <run dir>/wandb/offline-run-*`` uploads (network): check that its glob names offline runs."""
    pattern = shlex.split(cmd.text)[2].replace("logs/run/runs/<date>_<time>/", "")
    run = ctx.fixture("readme_tiny_run").run_dir
    hits = sorted(run.glob(pattern))
    assert hits, f"{cmd.where}: `{cmd.text}`: {pattern} matches nothing in the tiny run {run}"
    for d in hits:
        assert d.is_dir() and list(d.glob("*.wandb")), f"{d} is not an offline W&B run directory"


def check_venv(cmd: Command, ctx: Ctx) -> None:
    if not (ROOT / ".venv").is_dir():
        pytest.skip("no .venv in this checkout (make run creates it)")
    assert (ROOT / ".venv" / "bin" / "activate").is_file(), f"{cmd.where}: `{cmd.text}`: no .venv/bin/activate"


def skip_because(reason: str) -> Callable[[Command, Ctx], None]:
    def skip(cmd: Command, ctx: Ctx) -> None:
        pytest.skip(reason)
    return skip


@dataclass(frozen=True)
class Form:
    pattern: str  # a regex the whole command must match
    run: Callable[[Command, Ctx], Any]
    slow: bool


# First match wins.
FORMS = [
    Form(r"make test(-all)?( .*)?|pytest( .*)?", skip_because("this test suite itself (make test = pytest -m 'not "
                                                            "slow'; make test-all adds the slow tests)"), False),
    Form(r"source \.venv/bin/activate", check_venv, False),
    Form(r"make run( ARGS=.*)?", run_make_run, True),
    Form(r"make bench( BENCH_ARGS=.*)?", run_make_bench, True),
    Form(r"advprior (-m|--multirun) [^<>]*", run_advprior, False),
    Form(r"advprior( [^<>]*)?", run_advprior, True),
    Form(r"advprior-report|wandb", skip_because("a name in the prose, not a command"), False),
    Form(r"advprior-report logs/run/runs/<date>_<time>/?", run_report, False),
    Form(r"wandb sync logs/run/runs/<date>_<time>/wandb/offline-run-\*", check_wandb_sync, False),
    Form(r"python scripts/readme_results\.py <sweep dir>", run_readme_results, True),
    Form(r"python scripts/(bench_\w+|cpu_variation)\.py( --readme README\.md)?", run_script, True),
]


def classify(cmd: Command) -> Form | None:
    return next((f for f in FORMS if re.fullmatch(f.pattern, cmd.text)), None)


def check_command(cmd: Command, ctx: Ctx) -> None:
    """Run (or check) one README command; ReadmeCommandError if it fails or has no known form."""
    form = classify(cmd)
    if form is None:
        raise ReadmeCommandError(f"{cmd.where} shows a command this test does not know how to run: {cmd.text} "
                                 "(add its form to FORMS in tests/test_readme_commands.py)")
    form.run(cmd, ctx)


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def fake_imagenet(tmp_path_factory) -> Path:
    return make_fake_imagenet(tmp_path_factory.mktemp("imagenet"), num_classes=5, per_class_train=6,
                              num_val=6).root


@pytest.fixture(scope="session")
def readme_tiny_run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="session")
def claims_sweep(tmp_path_factory) -> Path:
    cmd = Command("advprior " + " ".join(CLAIMS_SWEEP), 0)  # line 0: no README line, a fixture
    return run_advprior(cmd, Ctx(lambda: tmp_path_factory.mktemp("claims"), lambda name: None), CLAIMS_SWEEP)


@pytest.fixture
def ctx(tmp_path_factory, request) -> Ctx:
    return Ctx(functools.partial(tmp_path_factory.mktemp, "readme_cmd"), request.getfixturevalue)


# ------------------------------------------------------------------------------------ the README's commands
def _cases():
    for cmd in extract_commands(README.read_text()):
        form = classify(cmd)
        marks = [pytest.mark.slow] if form is not None and form.slow else []
        yield pytest.param(cmd, marks=marks, id=f"L{cmd.line} {cmd.text}")


@pytest.mark.parametrize("cmd", list(_cases()))
def test_readme_command(cmd, ctx):
    check_command(cmd, ctx)


# ------------------------------------------------------------------------------------------- unit tests
def test_extracts_bash_lines_and_inline_commands_only():
    md = "\n".join([
        "Run `make run` first, then `advprior seed=1`; `vgg_small` and `advprior.cli` are",  # 1
        "words. A span over lines: `advprior stages=[train]",  # 2
        "model=[shallow]`.",  # 3
        "```bash",  # 4
        "advprior -m a=1,2 \\",  # 5
        "   'b=[1,2]'     # a comment",  # 6
        "",  # 7
        "advprior 'x=# not a comment'  # but this is",  # 8
        "make run",  # 9
        "```",  # 10
        "```python",  # 11
        "advprior in_python=1",  # 12
        "```",  # 13
        "```",  # 14
        "advprior unlabelled=1 `advprior in_block=1`",  # 15
        "```",  # 16
        "| a | `wandb sync x/*` |",  # 17
    ])
    got = [(c.text, c.line, c.also) for c in extract_commands(md)]
    assert got == [
        ("make run", 1, (9,)),
        ("advprior seed=1", 1, ()),
        ("advprior stages=[train] model=[shallow]", 2, ()),
        ("advprior -m a=1,2 'b=[1,2]'", 5, ()),
        ("advprior 'x=# not a comment'", 8, ()),
        ("wandb sync x/*", 17, ()),
    ]
    assert Command("make run", 1, (9,)).where == "README line 1 (also line 9)"


def test_every_readme_command_has_a_form():
    unknown = [f"line {c.line}: {c.text}" for c in extract_commands(README.read_text()) if classify(c) is None]
    assert not unknown, unknown


def test_the_readme_shows_the_sweep_of_issue_12():
    cmds = {c.text: c for c in extract_commands(README.read_text())}
    sweep = "advprior -m prior.bottleneck=2,4 prior.bandwidth=scott,0.5 'attack.epsilons=[0.85,8]'"
    assert sweep in cmds and not classify(cmds[sweep]).slow


def test_an_unknown_command_form_fails(ctx):
    (cmd,) = extract_commands("Deploy with `make deploy`.\n")
    with pytest.raises(ReadmeCommandError, match=r"README line 1 shows a command this test does not know how to "
                                                 r"run: make deploy"):
        check_command(cmd, ctx)


def test_a_broken_advprior_command_fails(ctx):
    (cmd,) = extract_commands("# x\n\n```bash\nadvprior stages=[train] prior.bandwidth=-1\n```\n")
    assert cmd.line == 4
    with pytest.raises(ReadmeCommandError, match=r"(?s)README line 4: .*failed \(exit status 1\).*ConfigError: "
                                                 r"prior.bandwidth=-1: must be a positive number"):
        check_command(cmd, ctx)


def test_a_script_the_readme_names_must_exist(ctx):
    (cmd,) = extract_commands("`python scripts/bench_nothing.py`\n")
    with pytest.raises(ReadmeCommandError, match=r"scripts/bench_nothing.py does not exist"):
        check_command(cmd, ctx)
