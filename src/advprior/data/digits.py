"""``digits``: scikit-learn's bundled 8x8 digits, upsampled to [0,1] images: the embedded default."""
from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset

from ..identity import tensor_digest
from .loaders import DataIdentityMixin, make_loader


class TensorImageDataset(Dataset):
    """In-memory images ``(N, C, H, W)`` in [0,1] with labels; yields ``(image, label, index)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i]), i

    def identity(self) -> dict:
        """A digest of the images and labels (see ``DataIdentityMixin``)."""
        return {"arrays": tensor_digest(self.images, self.labels)}


class DigitsDataModule(DataIdentityMixin, pl.LightningDataModule):
    """The 1,797 digits (10 classes), 8x8 upsampled bilinearly to ``image_size``, in [0,1].

    Split: stratified train/val/test from ``seed`` (deterministic). ``channels`` 1 or 3 (replicated).
    """

    num_classes = 10
    hierarchy = None

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 1,
        val_fraction: float = 0.15,
        test_fraction: float = 0.25,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        eval_subset: int | None = None,
        support_per_class: int | None = None,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {channels}")
        if image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {image_size}")
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError("data.val_fraction and data.test_fraction must be in (0,1) and sum to less than 1")
        self.image_size, self.channels = image_size, channels
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.seed, self.eval_subset, self.support_per_class = int(seed), eval_subset, support_per_class
        self.class_names = [str(i) for i in range(10)]
        self._splits: dict[str, TensorImageDataset] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        d = load_digits()
        x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # pixel values 0..16
        x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False).clamp_(0, 1)
        x = x.expand(-1, self.channels, -1, -1).contiguous()
        y = torch.from_numpy(d.target.astype(np.int64))
        idx = np.arange(len(y))
        rest, test = train_test_split(idx, test_size=self.test_fraction, stratify=d.target, random_state=self.seed)
        val_size = self.val_fraction / (1 - self.test_fraction)
        train, val = train_test_split(rest, test_size=val_size, stratify=d.target[rest], random_state=self.seed)
        self._splits = {
            name: TensorImageDataset(x[np.sort(ids)], y[np.sort(ids)])
            for name, ids in (("train", train), ("val", val), ("test", test))
        }

    def split(self, name: str) -> TensorImageDataset:
        self.setup()
        return self._splits[name]

    def eval_dataset(self) -> Dataset:
        """The attack study's images: the first ``eval_subset`` test images (all when null)."""
        ds = self.split("test")
        if self.eval_subset is None:
            return ds
        return TensorImageDataset(ds.images[: self.eval_subset], ds.labels[: self.eval_subset])

    def support_dataset(self, per_class: int | None = None) -> Dataset:
        """The prior's support set: the first ``per_class`` training images of each class (all when null)."""
        ds = self.split("train")
        per_class = per_class if per_class is not None else self.support_per_class
        if per_class is None:
            return ds
        keep = torch.cat([torch.nonzero(ds.labels == c).flatten()[:per_class] for c in range(self.num_classes)])
        keep = keep.sort().values
        return TensorImageDataset(ds.images[keep], ds.labels[keep])

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.split("train"), self.batch_size, shuffle=True, seed=self.seed, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.split("val"), self.eval_batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return make_loader(self.split("test"), self.eval_batch_size, num_workers=self.num_workers)
