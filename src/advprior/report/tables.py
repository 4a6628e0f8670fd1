"""Stored tables as display tables: interval triplets (``m``, ``m_low``, ``m_high``) merged into one cell,
rates as percentages, counts as integers. Used by the HTML reports."""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .headlines import format_value
from .rundata import is_number

# Columns holding fractions in [0, 1] (shown as percentages): rates, accuracies, probabilities, confidences.
RATE_COLUMN = re.compile(r"(rate|acc|acc_top5|prob|conf|confidence)(_mean|_fooled|_high_conf)?$")
HEADER_NAMES = {"eps_255": "eps (/255)"}


@dataclass
class Table:
    """What a template draws: a title, column headers, rows of display strings and a note under it."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    numeric: list[bool] = field(default_factory=list)   # right-align these columns


def is_rate_column(col: str) -> bool:
    """A fraction shown as a percentage (``n``/``n_*`` columns are counts)."""
    return not (col == "n" or col.startswith("n_")) and bool(RATE_COLUMN.search(col))


def format_cell(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return str(v)
    if is_number(v):
        if is_rate_column(col):
            return f"{100 * float(v):.1f}%"
        if float(v).is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{float(v):.4g}"
    return str(v)


def frame_table(df: pd.DataFrame, title: str, columns: Iterable[str] | None = None, max_rows: int | None = None,
                note: str = "") -> Table:
    """``df`` as a ``Table``: ``m``/``m_low``/``m_high`` become one "m [low, high]" column; ``eps`` is dropped
    when ``eps_255`` is there; ``columns`` keeps (in order) only those (interval parts follow their value)."""
    cols = [c for c in (columns if columns is not None else df.columns) if c in df.columns]
    if "eps_255" in cols and "eps" in cols:
        cols.remove("eps")
    shown = [c for c in cols if not (c.endswith(("_low", "_high")) and c.rsplit("_", 1)[0] in df.columns)]
    body = df if max_rows is None else df.head(max_rows)
    rows = []
    for _, r in body.iterrows():
        cells = []
        for c in shown:
            if f"{c}_low" in df.columns and f"{c}_high" in df.columns:
                cells.append(format_value(r[c], r[f"{c}_low"], r[f"{c}_high"], "%" if is_rate_column(c) else "")
                             .replace("n/a", "–"))
            else:
                cells.append(format_cell(c, r[c]))
        rows.append(cells)
    if max_rows is not None and len(df) > max_rows:
        note = (note + " " if note else "") + f"First {max_rows} of {len(df)} rows."
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in shown]
    return Table(title, [HEADER_NAMES.get(c, c) for c in shown], rows, note, numeric)


def mapping_table(values: Mapping[str, Any], title: str, key_header: str = "metric", note: str = "") -> Table:
    """A two-column table of ``key -> value``."""
    rows = [[k, format_cell(k, v)] for k, v in values.items()]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values())
    return Table(title, [key_header, "value"], rows, note, [False, numeric])


def pivot_metrics(metrics: Mapping[str, Any], prefix: str) -> pd.DataFrame | None:
    """``<prefix>/<name>/<metric>`` entries of metrics.json as a frame: one row per name, one column per metric."""
    rows: dict[str, dict[str, Any]] = {}
    for k, v in metrics.items():
        parts = k.split("/")
        if len(parts) == 3 and parts[0] == prefix:
            rows.setdefault(parts[1], {})[parts[2]] = v
    if not rows:
        return None
    return pd.DataFrame([{"model": n, **m} for n, m in rows.items()])
