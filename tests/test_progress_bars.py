"""Every stage runs whether progress bars are shown or not: the default config asks for bars
(``trainer.enable_progress_bar=true``), which are shown only on a terminal; the image loops bring their own bar
and the trainers of the other stages Lightning's Rich bar."""
from __future__ import annotations

import pytest

from advprior.cli import run_task
from advprior.utils import progress

try:
    from tiny_run import OVERRIDES
except ImportError:  # tests/ imported as a package
    from tests.tiny_run import OVERRIDES


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_every_stage_runs_with_bars_asked_for(make_cfg, monkeypatch, terminal):
    monkeypatch.setattr(progress.Console, "is_terminal", property(lambda self: terminal))
    monkeypatch.setattr(progress, "_enabled", True)
    assert progress.shown(True) is terminal and progress.shown(False) is False
    over = [o for o in OVERRIDES if o != "debug=fast"] + ["trainer.enable_progress_bar=true", "extras.rich_progress=true", "model=[shallow]",
                                                         "stages=[attack,defense,activations]", "fooling.generations=2"]
    metrics = run_task(make_cfg(over))
    assert any(k.startswith("attack/") for k in metrics) and any(k.startswith("defense/") for k in metrics)
