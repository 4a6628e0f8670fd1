"""Atomic file writes: a reader never sees a half-written file, an interrupted write leaves the old one."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically."""
    return atomic_write(path, lambda p: torch.save(obj, p))


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors, dicts, lists, numbers and strings only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (sorted keys, indented)."""
    def write(p: Path) -> None:
        p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return atomic_write(path, write)


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def save_parquet(df: Any, path: str | os.PathLike) -> Path:
    """Write a DataFrame as Parquet atomically (no index)."""
    return atomic_write(path, lambda p: df.to_parquet(p, index=False))


def save_csv(df: Any, path: str | os.PathLike) -> Path:
    """Write a DataFrame as CSV atomically (no index)."""
    return atomic_write(path, lambda p: df.to_csv(p, index=False))
