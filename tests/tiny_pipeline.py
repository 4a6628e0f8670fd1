"""Shared helpers for store/key tests: a seconds-long pipeline configuration and in-place file corruption."""
from __future__ import annotations

import os
from pathlib import Path

from advprior.context import RunContext
from advprior.store import ArtifactStore

# Every stage on the digits in seconds: a one-hidden-layer net (its ``fc1`` is the prior's layer), a few
# batches, 16 evaluation images, one eps, a 4-d PCA and a 2-d code.
TINY = ["model=[shallow_hidden]", "prior.feature_layer=fc1", "data.eval_subset=16", "attack.epsilons=[8]",
        "attack.figure_eps=8", "attack.n_boot=20", "attack.grid_samples=1", "prior.n_components=4",
        "prior.bottleneck=2", "prior.ae.epochs=2", "defense.adaptive.pgd.steps=1", "defense.panels=1"]


def ctx_for(cfg) -> RunContext:
    """A RunContext on ``cfg``'s run directory and store (no loggers), for computing keys."""
    return RunContext(cfg=cfg, run_dir=Path(cfg.paths.output_dir), store=ArtifactStore(cfg.paths.store_dir))


def zero_bytes(path: Path, n: int = 64) -> None:
    """Overwrite ``n`` bytes in the middle of ``path`` with zeros in place: same size, and the modification
    time put back, so only a checksum can tell."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(max(0, st.st_size // 2 - n // 2))
        f.write(b"\0" * min(n, st.st_size))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
