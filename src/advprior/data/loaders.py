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


def check_loader_args(
    batch_size: int,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
    subsets: dict[str, int | None] | None = None,
) -> None:
    """Shared DataModule argument checks; ``subsets`` maps argument names (e.g. ``eval_subset``,
    ``support_per_class``) to values that must be positive ints or None."""
    if batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size}, allowed >= 1")
    if eval_batch_size is not None and eval_batch_size < 1:
        raise ValueError(f"eval_batch_size: got {eval_batch_size}, allowed >= 1 or null (= batch_size)")
    if num_workers < 0:
        raise ValueError(f"num_workers: got {num_workers}, allowed >= 0")
    for name, value in (subsets or {}).items():
        if value is not None and int(value) < 1:
            raise ValueError(f"{name}: got {value}, allowed a positive int or null (all)")


IDENTITY_PARTS = ("fit", "eval", "support")


class DataIdentityMixin:
    """``identity(part)`` for a DataModule with ``split``, ``eval_dataset`` and ``support_dataset``.

    The identity is a JSON-able description of exactly the data a part serves, for store keys: ``"fit"``
    (the train, val and test splits training and its test accuracy read), ``"eval"`` (``eval_dataset()``,
    the attack and defense images) or ``"support"`` (``support_dataset(per_class)``, the prior's images).
    Each dataset describes itself (``identity()``: a digest of in-memory arrays, or of the served files'
    paths, labels, sizes and modification times plus the transform); the class names and input shape are
    added, and ``extra_identity()`` (e.g. the ImageNet devkit files). Computed once per DataModule and part.
    """

    def identity(self, part: str = "fit", per_class: int | None = None) -> dict:
        cache = self.__dict__.setdefault("_identity_cache", {})
        if (part, per_class) not in cache:
            if part == "fit":
                datasets = [self.split(s) for s in ("train", "val", "test")]
            elif part == "eval":
                datasets = [self.eval_dataset()]
            elif part == "support":
                datasets = [self.support_dataset(per_class)]
            else:
                raise ValueError(f"part: got {part!r}, allowed {list(IDENTITY_PARTS)}")
            cache[(part, per_class)] = {
                "module": type(self).__name__, "classes": list(self.class_names),
                "input_shape": list(self.input_shape), "datasets": [d.identity() for d in datasets],
                **self.extra_identity(),
            }
        return cache[(part, per_class)]

    def extra_identity(self) -> dict:
        return {}
