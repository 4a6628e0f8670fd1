"""Content-addressed artifact store: each stage's outputs live under ``<root>/<stage>/<key>/``.

The key is a hash of everything the stage's result depends on (its config subtree, the keys of its
inputs, a code version). A stage directory counts as complete only once its ``_done.json`` manifest
exists and every file it lists has the recorded size, so a killed run never reuses half an output;
files inside are written atomically (``advprior.utils.io``), so partial work (shards) can be resumed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from .utils.io import save_json

log = logging.getLogger(__name__)

MANIFEST = "_done.json"


def config_without(node: Any, ignored: set[str] | tuple[str, ...]) -> dict:
    """A resolved config node as a plain dict, minus keys that do not change a stage's result."""
    from omegaconf import OmegaConf
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in ignored}


def config_key(payload: Any) -> str:
    """A short stable hash of a JSON-able payload (sorted keys)."""
    blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ArtifactStore:
    """Directories keyed by stage and config hash, with completion manifests."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def key(self, stage: str, payload: Any) -> str:
        return config_key({"stage": stage, "payload": payload})

    def path(self, stage: str, key: str) -> Path:
        p = self.root / stage / key
        p.mkdir(parents=True, exist_ok=True)
        return p

    def is_done(self, stage: str, key: str) -> bool:
        """True when the manifest exists and every listed file is present with its recorded size."""
        manifest = self.root / stage / key / MANIFEST
        if not manifest.is_file():
            return False
        try:
            entries = json.loads(manifest.read_text())["files"]
        except (json.JSONDecodeError, KeyError):
            log.warning("ignoring unreadable manifest %s", manifest)
            return False
        for name, size in entries.items():
            f = manifest.parent / name
            if not f.is_file() or f.stat().st_size != size:
                log.warning("artifact %s is missing or changed; recomputing stage %s", f, stage)
                return False
        return True

    def mark_done(self, stage: str, key: str, meta: dict | None = None) -> Path:
        """Write the manifest listing every file now in the stage directory (last step of a stage)."""
        d = self.path(stage, key)
        files = {
            str(f.relative_to(d)): f.stat().st_size
            for f in sorted(d.rglob("*")) if f.is_file() and f.name != MANIFEST and not f.name.startswith(".")
        }
        save_json({"files": files, "meta": meta or {}}, d / MANIFEST)
        return d

    def read_meta(self, stage: str, key: str) -> dict:
        return json.loads((self.root / stage / key / MANIFEST).read_text()).get("meta", {})


def link_into(src: Path, dst: Path) -> Path:
    """Make ``dst`` a hard link to ``src`` (a copy across file systems); replaces an existing ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    return dst
