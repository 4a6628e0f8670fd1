"""``ConfigError``: one invalid configuration value, said as ``key=value: what is allowed (e.g. the fix)``."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

_UNSET = object()
_KEY_REF = re.compile(r"\{([A-Za-z_][\w.]*)\}")


def fmt(value: object) -> str:
    """``value`` as it is written in a Hydra override: ``null``, ``true``, ``0.85``, ``[0.85,300]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(fmt(v) for v in value) + "]"
    return str(value)


class ConfigError(ValueError):
    """An invalid configuration value, raised before any work.

    ``ConfigError.invalid(key, value, allowed, example=..., fix=...)`` builds the message
    ``key=value: allowed (e.g. key=example); fix``. Inside a schema ``key`` is the field name and sibling keys
    are written ``{name}`` in ``allowed``/``fix``; ``at(path)`` prefixes all of them with the node's path when
    the check runs on a composed config (``bandwidth`` -> ``prior.bandwidth``). ``key`` is the full key.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self._parts: tuple | None = None

    @classmethod
    def invalid(cls, key: str, value: object, allowed: str, example: object = _UNSET,
                fix: str | None = None, *, prefix: str = "", via: str | None = None) -> "ConfigError":
        full = prefix + key
        msg = f"{full}={fmt(value)}: {_refs(allowed, prefix)}"
        if example is not _UNSET:
            msg += f" (e.g. {full}={fmt(example)})"
        if fix:
            msg += f"; {_refs(fix, prefix)}"
        if via:
            msg += f" (copied into {via})"
        err = cls(msg, key=full)
        err._parts = (prefix, key, value, allowed, example, fix)
        return err

    def at(self, path: str, blame: str | None = None) -> "ConfigError":
        """The same error with its keys prefixed by ``path`` (a dotted node path; "" for the root).
        ``blame``: the full key to name instead, when the bad value was interpolated from there."""
        if not path:
            return self
        if self._parts is None:  # a plain message: say where it came from
            return ConfigError(f"{path}: {self}", key=path)
        prefix, key, value, allowed, example, fix = self._parts
        prefix = f"{path}.{prefix}"
        if blame is None:
            return ConfigError.invalid(key, value, allowed, example, fix, prefix=prefix)
        # name the source of the value; sibling references stay relative to the node that was checked
        return ConfigError.invalid(blame, value, _refs(allowed, prefix), _UNSET, fix and _refs(fix, prefix),
                                   via=prefix + key)


def _refs(text: str, prefix: str) -> str:
    """``{name}`` -> ``prefix + name`` (sibling keys named inside a schema's message)."""
    return _KEY_REF.sub(lambda m: prefix + m.group(1), text)
