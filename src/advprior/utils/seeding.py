"""One ``seed`` for torch, numpy, Python and Lightning's samplers (0 is a valid seed)."""
from __future__ import annotations

import pytorch_lightning as pl


def seed_everything(seed: int) -> int:
    """Seed Python, numpy and torch (and dataloader workers). scikit-learn gets ``random_state=seed``
    explicitly wherever it is called; never ``if seed:``, which would skip seed 0."""
    if seed is None or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return pl.seed_everything(int(seed), workers=True, verbose=False)
