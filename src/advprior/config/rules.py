"""Value checks for schema ``__post_init__`` methods: each raises ``ConfigError`` naming the field, the bad
value, what is allowed and an example (by default the field's own default)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

from omegaconf import MISSING

from .errors import ConfigError, fmt

AUTO = object()  # example = the field's default


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    """A finite int or float (bools and NaN/inf are not numbers here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def default_of(obj: object, name: str) -> object:
    """The dataclass default of field ``name`` (AUTO when it has none or it is MISSING/None)."""
    for f in dataclasses.fields(obj):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                return AUTO
            return AUTO if value is None or value == MISSING else value
    return AUTO


def fail(obj: object, name: str, allowed: str, example: object = AUTO, fix: str | None = None) -> None:
    """Raise ``ConfigError`` for the value of field ``name`` of ``obj``: ``allowed`` says what is allowed
    (``{key}`` names a sibling key), ``example`` a valid value (default: the field's default), ``fix`` more."""
    value = getattr(obj, name)
    if example is AUTO:
        example = default_of(obj, name)
    if example is AUTO or example == value:
        raise ConfigError.invalid(name, value, allowed, fix=fix)
    raise ConfigError.invalid(name, value, allowed, example, fix=fix)


def _null(null: str | None) -> str:
    return f" or null ({null})" if null else ""


def positive_int(obj: object, name: str, null: str | None = None, example: object = AUTO) -> None:
    """An int >= 1; ``null``: None is allowed and means this."""
    v = getattr(obj, name)
    if not ((null and v is None) or (is_int(v) and v >= 1)):
        fail(obj, name, f"must be a positive integer{_null(null)}", example)


def int_at_least(obj: object, name: str, low: int, null: str | None = None, example: object = AUTO) -> None:
    v = getattr(obj, name)
    if not ((null and v is None) or (is_int(v) and v >= low)):
        fail(obj, name, f"must be an integer >= {low}{_null(null)}", example)


def number_in(obj: object, name: str, low: float | None = None, high: float | None = None,
              low_open: bool = False, high_open: bool = False, null: str | None = None,
              example: object = AUTO) -> None:
    """A finite number within the bounds (None: unbounded on that side)."""
    v = getattr(obj, name)
    if null and v is None:
        return
    ok = is_number(v)
    ok = ok and (low is None or (v > low if low_open else v >= low))
    ok = ok and (high is None or (v < high if high_open else v <= high))
    if ok:
        return
    if low is not None and high is not None:
        what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        what = "a positive number" if (low == 0 and low_open) else f"a number {'>' if low_open else '>='} {low:g}"
    else:
        what = "a finite number"
    fail(obj, name, f"must be {what}{_null(null)}", example)


def one_of(obj: object, name: str, options: Iterable[object], null: str | None = None,
           example: object = AUTO) -> None:
    v = getattr(obj, name)
    options = list(options)
    if (null and v is None) or (not isinstance(v, bool) and v in options):
        return
    fail(obj, name, f"must be one of {', '.join(str(o) for o in options)}{_null(null)}", example)


def non_empty_str(obj: object, name: str, what: str = "a non-empty string", example: object = AUTO) -> None:
    v = getattr(obj, name)
    if not (isinstance(v, str) and v.strip()):
        fail(obj, name, f"must be {what}", example)


def int_list(obj: object, name: str, low: int = 1, example: object = AUTO) -> Sequence[int]:
    """A non-empty list of ints >= ``low``."""
    v = getattr(obj, name)
    if not (isinstance(v, Sequence) and not isinstance(v, str) and len(v) and all(is_int(x) and x >= low for x in v)):
        fail(obj, name, f"must be a non-empty list of integers >= {low}", example)
    return v


def epsilons(obj: object, name: str = "epsilons", scale: str = "scale") -> None:
    """A non-empty list of eps written on the ``scale`` scale: each eps/scale in [0,1] (pixel units), distinct
    in 4 significant digits (they name the metrics)."""
    eps, s = getattr(obj, name), getattr(obj, scale)
    if not (isinstance(eps, Sequence) and not isinstance(eps, str) and len(eps) and all(is_number(e) for e in eps)):
        fail(obj, name, "must be a non-empty list of numbers")
    negative = [e for e in eps if e < 0]
    if negative:
        fail(obj, name, f"{fmt(negative[0])} is negative; each eps must be >= 0")
    big = [e for e in eps if e / s > 1]
    if big:
        e = big[0]
        allowed = f"{fmt(e)} / {{{scale}}}={fmt(s)} = {e / s:.4g} is above 1, but eps/{{{scale}}} is in [0,1] pixel units"
        if s > 1:
            fail(obj, name, allowed, fix=f"write each eps on the 0-{fmt(s)} scale (the paper's 0.85 means 0.85/255)")
        fail(obj, name, allowed, example=[0.0033, 0.0157],
             fix=f"or write them on the 0-255 scale with {{{scale}}}=255")
    names = [f"{e / s:.4g}" for e in eps]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        fail(obj, name, f"eps/{{{scale}}}={', '.join(dup)} appears more than once (4 significant digits name the "
                        "metrics)", fix="remove the duplicates")
