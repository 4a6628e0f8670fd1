"""The terminal's closing summary: the headline rows as a compact Rich table (plain text, no colour codes,
so the same text goes to the console and to run.log)."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from .headlines import Headline


def headline_table_text(rows: list[Headline], report_path: str | Path | None = None, width: int | None = None) -> str:
    """``rows`` as a table (section, what was measured, value [95% CI], verdict), then the report's path."""
    width = width or max(100, min(160, shutil.get_terminal_size((140, 24)).columns))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, expand=False,
                  title="What this run found (95% intervals)", title_justify="left")
    table.add_column("§", no_wrap=True)
    table.add_column("measured", overflow="fold")
    table.add_column("value [95% CI]", no_wrap=True, justify="right")
    table.add_column("verdict", overflow="fold")
    for r in rows:
        table.add_row(r.section, r.quantity, r.formatted(), r.verdict)
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, no_color=True)
    if rows:
        console.print(table)
    else:
        console.print("No stage of this run stored results the summary reads (attack, defense, fooling, activations).")
    if report_path is not None:
        console.print(f"Report: {report_path}", overflow="ignore", crop=False, soft_wrap=True)
    return "\n".join(line.rstrip() for line in console.file.getvalue().rstrip("\n").splitlines())
