"""Content-addressed artifact store: each stage's outputs live under ``<root>/<stage>/<key>/``.

The key is a hash of everything the stage's result depends on (``advprior.keys``: the config subset
that changes it, its inputs' keys, the content identity of its data and weights, a code version). A
directory counts as complete only once its ``_done.json`` manifest exists and every file it lists has the
recorded size and sha256; files inside are written atomically (``advprior.utils.io``), so partial work
(shards) resumes after a crash, and a corrupted file (even one of the same size) is detected, named in a
warning and recomputed, never served. Checksums are verified once per process per file version
(``advprior.identity.file_digest``).

Use ``claim``, which holds a per-artifact file lock, so concurrent runs on one store wait for each other
instead of racing; the second finds the first's result done and reuses it::

    with store.claim("attack", key) as art:
        if not art.done:
            ...  # write files into art.dir (shards may already be there from a killed run)
            art.commit(meta)
        ...  # read from art.dir; art.meta holds the committed meta
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .identity import HASH, file_digest
from .utils.io import save_json

log = logging.getLogger(__name__)

MANIFEST = "_done.json"
MANIFEST_FORMAT = 2
WEIGHT_HASHES = "weight_hashes.json"


def config_without(node: Any, ignored: set[str] | tuple[str, ...]) -> dict:
    """A resolved config node as a plain dict, minus keys that do not change a stage's result."""
    from omegaconf import OmegaConf
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in ignored}


def config_key(payload: Any) -> str:
    """A short stable hash of a JSON-able payload (sorted keys)."""
    blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Artifact:
    """One claimed store directory. ``done``: a verified result is there (read it); otherwise write into
    ``dir`` and call ``commit``. ``meta``: the JSON-able dict committed with it."""

    store: "ArtifactStore"
    stage: str
    key: str
    dir: Path
    done: bool
    meta: dict = field(default_factory=dict)
    writer: bool = True  # False on DDP ranks other than 0 (``distributed.claim``): rank 0 alone commits

    def commit(self, meta: dict | None = None) -> None:
        """Checksum every file now in ``dir`` into the manifest: the last step of computing the artifact."""
        if self.writer:
            self.store.mark_done(self.stage, self.key, meta)
        self.done, self.meta = True, dict(meta or {})


class ArtifactStore:
    """Directories keyed by stage and content hash, with checksummed manifests and per-artifact locks."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def key(self, stage: str, payload: Any) -> str:
        return config_key({"stage": stage, "payload": payload})

    @property
    def weights_cache(self) -> Path:
        """The JSON file caching weight-file content hashes (``identity.weights_digest``)."""
        return self.root / WEIGHT_HASHES

    def path(self, stage: str, key: str) -> Path:
        p = self.root / stage / key
        p.mkdir(parents=True, exist_ok=True)
        return p

    def lock(self, stage: str, key: str) -> FileLock:
        """The inter-process lock of one artifact (released by the OS if its holder dies)."""
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / stage / f".{key}.lock"))

    @contextlib.contextmanager
    def claim(self, stage: str, key: str, lock: bool = True) -> Iterator[Artifact]:
        """Hold the artifact's lock (waiting for another run that holds it), verify what is stored, and
        yield an ``Artifact``. A corrupted or foreign result is discarded before the body runs.

        ``lock=False``: no locking (for DDP ranks other than rank 0, which locks for all of them)."""
        lk = self.lock(stage, key) if lock else contextlib.nullcontext()
        if lock:
            try:
                lk.acquire(timeout=0)
            except Timeout:
                log.info("%s %s: another run is computing it (lock %s); waiting", stage, key, lk.lock_file)
                lk.acquire()
        try:
            state = self.verify(stage, key)
            d = self.root / stage / key
            if state == "corrupt":
                discard(d)
            d.mkdir(parents=True, exist_ok=True)
            art = Artifact(self, stage, key, d, done=state == "done",
                           meta=self.read_meta(stage, key) if state == "done" else {})
            yield art
            if not art.done:
                log.warning("%s %s: claimed but not committed; it will be recomputed next time", stage, key)
        finally:
            if lock:
                lk.release()

    def verify(self, stage: str, key: str) -> str:
        """``"done"`` (manifest present, every listed file there with its size and checksum), ``"missing"``
        (no manifest: never finished, maybe partial shards to resume) or ``"corrupt"`` (warned, naming the file)."""
        manifest = self.root / stage / key / MANIFEST
        if not manifest.is_file():
            return "missing"
        try:
            data = json.loads(manifest.read_text())
            entries = data["files"]
            if data.get("format") != MANIFEST_FORMAT:
                raise KeyError("format")
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s: unreadable manifest or one from an older advprior; recomputing stage %s", manifest, stage)
            return "corrupt"
        for name, entry in entries.items():
            f = manifest.parent / name
            if not f.is_file():
                log.warning("artifact file %s is missing; recomputing stage %s", f, stage)
                return "corrupt"
            if f.stat().st_size != entry["size"] or file_digest(f) != entry[HASH]:
                log.warning("artifact file %s is corrupted (its %s differs from the manifest); recomputing "
                            "stage %s", f, HASH, stage)
                return "corrupt"
        return "done"

    def is_done(self, stage: str, key: str) -> bool:
        """True when the artifact is complete and verified (see ``verify``); prefer ``claim``."""
        return self.verify(stage, key) == "done"

    def mark_done(self, stage: str, key: str, meta: dict | None = None) -> Path:
        """Write the manifest listing every file now in the stage directory with its size and checksum."""
        d = self.path(stage, key)
        files = {}
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.name != MANIFEST and not f.name.startswith("."):
                files[str(f.relative_to(d))] = {"size": f.stat().st_size, HASH: file_digest(f)}
        save_json({"format": MANIFEST_FORMAT, "files": files, "meta": meta or {}}, d / MANIFEST)
        return d

    def read_meta(self, stage: str, key: str) -> dict:
        return json.loads((self.root / stage / key / MANIFEST).read_text()).get("meta", {})


def discard(d: Path) -> None:
    """Remove an artifact directory, manifest first (a crash midway leaves it unfinished, never done)."""
    (d / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(d, ignore_errors=True)


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
