"""DataLoaders whose shuffling follows the run's seed."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0, **kw
) -> DataLoader:
    """A DataLoader; when shuffling, its generator is seeded from ``seed`` so batches repeat across runs.

    Under DDP Lightning replaces the sampler with a DistributedSampler seeded by ``seed_everything``.
    """
    gen = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=num_workers,
        persistent_workers=num_workers > 0, **kw,
    )
