"""Progress bars for the loops that take more than a few seconds (Rich, on rank 0, only on a terminal).

``progress(iterable, total=..., desc=..., unit="img", count=len)`` yields the items of ``iterable`` while a bar
shows done/total and the rate in ``unit``/s (``count(item)`` units per item, e.g. the images of a batch).
``configure(enabled)`` (the cli, from ``extras.rich_progress``) switches every bar off.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, \
    TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

T = TypeVar("T")
_enabled = True


def configure(enabled: bool) -> None:
    global _enabled
    _enabled = bool(enabled)


class RateColumn(ProgressColumn):
    """``1,234 img/s`` from Rich's own speed estimate."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {task.fields.get('unit', 'it')}/s" if speed else "", style="progress.data.speed")


def _rank_zero() -> bool:
    from pytorch_lightning.utilities import rank_zero_only
    return rank_zero_only.rank == 0


def shown(enabled: bool = True) -> bool:
    """Whether a progress bar is shown: ``enabled`` (the config's ``trainer.enable_progress_bar``), not switched
    off by ``configure``, on rank 0, and stderr is a terminal (never in a log file or a captured pipe)."""
    return bool(enabled) and _enabled and _rank_zero() and Console(stderr=True).is_terminal


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             count: Callable[[T], int] | None = None) -> Iterator[T]:
    """Yield ``iterable``'s items with a progress bar over ``total`` units (``count(item)`` per item, 1 if None)."""
    console = Console(stderr=True)
    if not shown():
        yield from iterable
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(desc, total=total, unit=unit)
        for item in iterable:
            yield item
            bar.advance(task, count(item) if count is not None else 1)


def batch_images(batch: Any) -> int:
    """The number of images of a ``(images, labels, ...)`` batch (for ``count=``)."""
    return len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch)


def lightning_progress(enabled: bool = True) -> dict[str, Any]:
    """Trainer arguments for Lightning's loops: a Rich bar (``callbacks``) when bars are shown, else no bar at
    all (``enable_progress_bar=False``: not Lightning's default tqdm bar either, e.g. in a log file)."""
    if not shown(enabled):
        return {"enable_progress_bar": False, "callbacks": []}
    from pytorch_lightning.callbacks import RichProgressBar
    return {"enable_progress_bar": True, "callbacks": [RichProgressBar(console_kwargs={"stderr": True})]}
