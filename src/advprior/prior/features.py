"""The support set's feature cache: named-layer activations (fc6) extracted once, in resumable shards."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..utils.io import load_torch, save_torch
from ..utils.progress import batch_images, progress

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    out_dir: str | Path,
    batch_size: int = 128,
    shard_size: int = 4096,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Activations of ``layer`` for every image of ``dataset``, cached under ``out_dir``.

    Each shard of ``shard_size`` images is written atomically as ``shard_XXXXX.pt``; shards already on
    disk are reused, so an interrupted extraction resumes where it stopped. Returns ``features`` (N, D)
    float32 (flattened), ``labels`` (N,) and ``indices`` (N,) (dataset positions), in dataset order.
    """
    out_dir = Path(out_dir)
    n = len(dataset)
    if n == 0:
        raise ValueError("the support set is empty: check data.support_per_class and the training split")
    model = model.eval().to(device)
    parts = []
    for s, start in enumerate(range(0, n, shard_size)):
        path = out_dir / f"shard_{s:05d}.pt"
        if path.is_file():
            parts.append(load_torch(path))
            continue
        feats, labels, idx = [], [], []
        loader = DataLoader(Subset(dataset, range(start, min(n, start + shard_size))), batch_size=batch_size,
                            num_workers=num_workers)
        for x, y, i in progress(loader, total=len(loader.dataset), desc=f"features ({layer}), shard {s}", unit="img",
                                count=batch_images):
            f = model.features(x.to(device), [layer])[layer].flatten(1)
            feats.append(f.float().cpu())
            labels.append(torch.as_tensor(y))
            idx.append(torch.as_tensor(i))
        part = {"features": torch.cat(feats), "labels": torch.cat(labels).long(), "indices": torch.cat(idx).long()}
        save_torch(part, path)
        parts.append(part)
        log.info("features: shard %d (%d images) of %s written", s, len(part["labels"]), layer)
    return {k: torch.cat([p[k] for p in parts]) for k in ("features", "labels", "indices")}
