"""Content identity for store keys: file digests, weight-file hashes, data listings and code versions.

A store key must change exactly when a stage's result can change. Paths and names are not enough (a
folder edited in place, a checkpoint overwritten, a source file edited keep their names), so keys hold
digests of content:

- ``file_digest``: sha256 of a file's bytes, memoized for the life of the process by
  ``(realpath, inode, size, mtime_ns, ctime_ns)``: a 5 GB feature cache is hashed at most once per run.
  ``ctime`` cannot be set by user tools (``touch -d``, ``cp -p`` set mtime only), so an in-place rewrite
  that restores the modification time is still seen.
- ``weights_digest``: the same hash for weight files (checkpoints, torchvision's hub files), cached across
  processes in a small JSON file keyed by the same stat tuple: a 550 MB VGG-19 file is hashed once.
- ``files_digest``: the served files of a dataset as ``(path, label, size, mtime_ns)``: a stat per file,
  never their content (350k images).
- ``tensor_digest``: in-memory arrays (the digits).
- ``code_version``: the source files a stage's results depend on (declared per stage), hashed once per
  process. Any edit of a declared file, comments included, invalidates that stage and everything after it:
  a needless recompute is cheap next to a stale result.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from .utils.io import save_json

log = logging.getLogger(__name__)

HASH = "sha256"
PACKAGE_DIR = Path(__file__).resolve().parent

_digests: dict[tuple, str] = {}


def stat_key(path: str | os.PathLike) -> tuple:
    """``(realpath, inode, size, mtime_ns, ctime_ns)``: what identifies a file's bytes without reading them."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _hash_file(path: str) -> str:
    h = hashlib.new(HASH)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of the file at ``path``, memoized per process by its ``stat_key``."""
    key = stat_key(path)
    digest = _digests.get(key)
    if digest is None:
        digest = _hash_file(key[0])
        if stat_key(path) == key:  # remember only if the file did not change while it was read
            _digests[key] = digest
    return digest


def weights_digest(path: str | os.PathLike, cache: str | os.PathLike | None = None) -> str:
    """Content hash of a weight file; ``cache`` (a JSON file, e.g. in the store) keeps it across processes.

    The cache maps realpath -> {size, mtime_ns, ctime_ns, inode, sha256}; a changed stat tuple rehashes.
    """
    key = stat_key(path)
    if key in _digests or cache is None:
        return file_digest(path)
    real, ino, size, mtime, ctime = key
    entry = {"inode": ino, "size": size, "mtime_ns": mtime, "ctime_ns": ctime}
    cache = Path(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{cache}.lock"):
        table = _read_json(cache)
        hit = table.get(real)
        if hit and HASH in hit and all(hit.get(k) == v for k, v in entry.items()):
            _digests[key] = hit[HASH]
            return hit[HASH]
        log.info("hashing weights %s (%.0f MB; once, cached in %s)", real, size / 2**20, cache)
        digest = file_digest(real)
        table[real] = {**entry, HASH: digest}
        save_json(table, cache)
    return digest


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def files_digest(samples: Iterable[tuple[str, int]]) -> str:
    """Digest of ``(absolute path, label, size, mtime_ns)`` of every sample (a stat each, no content read).

    A file that cannot be stat'ed (deleted since it was listed) counts with size -1: it will fail to load
    and be skipped, so it identifies the data served as well as any size would.
    """
    h = hashlib.new(HASH)
    cwd = os.getcwd()
    for path, label in samples:
        p = path if os.path.isabs(path) else os.path.join(cwd, path)
        try:
            st = os.stat(p)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        h.update(f"{p}\0{int(label)}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def stat_identity(paths: Sequence[str | os.PathLike]) -> dict[str, list[int]]:
    """``{path: [size, mtime_ns]}`` of a few metadata files (e.g. the ImageNet devkit's)."""
    out = {}
    for p in paths:
        st = os.stat(p)
        out[os.path.abspath(p)] = [st.st_size, st.st_mtime_ns]
    return out


def tensor_digest(*tensors: torch.Tensor) -> str:
    """Digest of tensors' dtypes, shapes and bytes (in-memory data such as the digits)."""
    h = hashlib.new(HASH)
    for t in tensors:
        a = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def code_version(paths: tuple[str, ...]) -> str:
    """Digest of the package's source files named by ``paths`` (relative to ``src/advprior``; a folder
    means every ``*.py`` below it), computed once per process."""
    files: list[Path] = []
    for rel in paths:
        p = PACKAGE_DIR / rel
        if p.is_dir():
            files += sorted(p.rglob("*.py"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"code version: {rel!r} is not a file or folder under {PACKAGE_DIR}")
    h = hashlib.new(HASH)
    for f in sorted(set(files)):
        h.update(str(f.relative_to(PACKAGE_DIR)).encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
