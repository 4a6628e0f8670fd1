"""Data module for any ImageFolder-style tree (class = sub-folder name), with the robust image dataset.

Layouts (``root``):

* pre-split: ``root/train/<class>/...``, ``root/val/<class>/...`` and optionally ``root/test/<class>/...``
  (no test/: the test loader uses val);
* single tree: ``root/<class>/...``, split per class (stratified) into train/val/test by
  ``val_fraction``/``test_fraction`` with a seeded shuffle: the same seed gives the same split on every run and every rank.

Classes are the sorted sub-folder names (of ``train/`` in the pre-split layout). Images are
(channels, image_size, image_size) floats in [0, 1]. There is no class hierarchy (``hierarchy = None``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from torchvision import transforms

from advprior.data.imagefiles import (
    CHECKS,
    IMG_EXTENSIONS,
    ON_BAD_IMAGE,
    ImageFileDataset,
    ImageFileLoader,
    Sample,
    _validate_choice,
    list_images,
    make_loader,
    resolve,
    stable_seed,
)
from advprior.data.loaders import DataIdentityMixin, check_loader_args

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the sub-folders of ``folder`` (hidden ones excluded)."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def class_images(folder: Path) -> list[str]:
    """The image files of one class folder; an empty one is an error (it would be a class without images)."""
    files = list_images(folder)
    if not files:
        raise ValueError(
            f"class folder {folder} holds no image files ({', '.join(IMG_EXTENSIONS)}): it would become a class "
            "that no image belongs to. Add images to it or remove the folder."
        )
    return files


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """(train, val, test) sizes for one class of ``n`` files: val and test rounded, train the rest."""
    n_val = int(np.floor(n * fractions[1] + 0.5))
    n_test = int(np.floor(n * fractions[2] + 0.5))
    n_val = min(n_val, n)
    n_test = min(n_test, n - n_val)
    return n - n_val - n_test, n_val, n_test


class FolderDataModule(DataIdentityMixin, pl.LightningDataModule):
    """ImageFolder data as ``(image, label, index)`` batches.

    Args:
        root: dataset root (see module doc).
        image_size: CenterCrop size; images are (channels, image_size, image_size).
        resize_size: shorter-side Resize before the crop (default ``image_size``: a square image is kept whole).
        channels: 3 (RGB) or 1 (grayscale).
        val_fraction, test_fraction: per-class fractions for the single-tree layout (train gets the rest).
        batch_size: train loader; eval_batch_size: val/test/support loaders (default ``batch_size``).
        num_workers, pin_memory: DataLoader settings.
        eval_subset: ``eval_dataset()`` = the first N test samples in (class, file name) order (null: all).
        support_per_class: N train images per class for ``support_dataset()`` (seeded choice; null: all train).
        on_bad_image: ``"skip"`` or ``"error"``; check: preflight of val/test/support (train: lazy only).
        check_cache_dir: folder caching the preflight's results (see ``ImageNetDataModule``); None: no cache.
        seed: split, support choice and train shuffling.
    """

    hierarchy = None

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 224,
        resize_size: int | None = None,
        channels: int = 3,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        eval_subset: int | None = None,
        support_per_class: int | None = None,
        on_bad_image: str = "skip",
        check: str = "decode",
        seed: int = 0,
        pin_memory: bool = True,
        check_cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels: got {channels}, allowed 1 (grayscale) or 3 (RGB)")
        if image_size < 1:
            raise ValueError(f"image_size: got {image_size}, allowed >= 1")
        for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= f < 1:
                raise ValueError(f"{name}: got {f}, allowed [0, 1)")
        if val_fraction + test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction: got {val_fraction} + {test_fraction}, allowed < 1 (train needs the rest)"
            )
        check_loader_args(batch_size, eval_batch_size, num_workers,
                          {"eval_subset": eval_subset, "support_per_class": support_per_class})
        _validate_choice("on_bad_image", on_bad_image, ON_BAD_IMAGE)
        _validate_choice("check", check, CHECKS)
        self.root = resolve(root)
        self.image_size = int(image_size)
        self.resize_size = int(resize_size) if resize_size is not None else self.image_size
        self.channels = int(channels)
        self.fractions = (1.0 - val_fraction - test_fraction, float(val_fraction), float(test_fraction))
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        self.num_workers = int(num_workers)
        self.eval_subset = None if eval_subset is None else int(eval_subset)
        self.support_per_class = None if support_per_class is None else int(support_per_class)
        self.on_bad_image = on_bad_image
        self.check = check
        self.check_cache_dir = check_cache_dir
        self.seed = int(seed)
        self.pin_memory = bool(pin_memory)
        self.transform = transforms.Compose(
            [transforms.Resize(self.resize_size), transforms.CenterCrop(self.image_size), transforms.ToTensor()]
        )
        self._samples: dict[str, list[Sample]] | None = None
        self._classes: list[str] | None = None
        self._datasets: dict[str, ImageFileDataset] = {}

    # ------------------------------------------------------------------ metadata
    @property
    def presplit(self) -> bool:
        return (self.root / "train").is_dir()

    @property
    def class_names(self) -> list[str]:
        if self._classes is None:
            if not self.root.is_dir():
                raise FileNotFoundError(
                    f"Dataset root not found: {self.root}; expected <root>/<class>/<images> or "
                    "<root>/train/<class>/ and <root>/val/<class>/"
                )
            classes = class_folders(self.root / "train" if self.presplit else self.root)
            if not classes:
                raise FileNotFoundError(f"No class sub-folders in {self.root}")
            self._classes = classes
        return list(self._classes)

    @property
    def wnids(self) -> list[str]:
        return self.class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    # ------------------------------------------------------------------ samples
    def _folder_samples(self, folder: Path, train: bool = False) -> list[Sample]:
        """Samples of one split folder; in the train split every class folder must hold images."""
        index = {c: i for i, c in enumerate(self.class_names)}
        unknown = [c for c in class_folders(folder) if c not in index]
        if unknown:
            raise ValueError(f"{folder}: class folders {unknown[:5]} are not among the train classes")
        listing = class_images if train else list_images
        return [(p, index[c]) for c in self.class_names if (folder / c).is_dir() for p in listing(folder / c)]

    def samples(self) -> dict[str, list[Sample]]:
        """``{"train"|"val"|"test": [(path, label), ...]}`` in (class, file name) order, deterministic given ``seed``."""
        if self._samples is None:
            if self.presplit:
                val = self.root / "val"
                if not val.is_dir():
                    raise FileNotFoundError(f"{self.root} has train/ but no val/ folder: expected {val}/<class>/...")
                test = self.root / "test"
                out = {"train": self._folder_samples(self.root / "train", train=True), "val": self._folder_samples(val)}
                out["test"] = self._folder_samples(test) if test.is_dir() else out["val"]
            else:
                out = {s: [] for s in SPLITS}
                for c, name in enumerate(self.class_names):
                    files = class_images(self.root / name)
                    rng = np.random.default_rng(stable_seed(self.seed, name))
                    files = [files[i] for i in rng.permutation(len(files))]
                    n_train, n_val, _ = split_counts(len(files), self.fractions)
                    parts = {"train": files[:n_train], "val": files[n_train:n_train + n_val],
                             "test": files[n_train + n_val:]}
                    for s in SPLITS:
                        out[s] += [(p, c) for p in sorted(parts[s])]
            self._samples = out
        return self._samples

    # ------------------------------------------------------------------ datasets
    def _build(self, key: str, samples: list[Sample], check: str, distributed: bool, **kw) -> ImageFileDataset:
        if key not in self._datasets:
            self._datasets[key] = ImageFileDataset(
                samples, self.transform, on_bad_image=self.on_bad_image, check=check,
                mode="RGB" if self.channels == 3 else "L", name=key, distributed=distributed,
                cache_dir=self.check_cache_dir, **kw,
            )
        return self._datasets[key]

    def split(self, name: str, distributed: bool = True) -> ImageFileDataset:
        """The ``"train"``, ``"val"`` or ``"test"`` split (train: no preflight, bad files dropped lazily).
        Built on first use; under DDP every rank must make that first call together."""
        if name not in SPLITS:
            raise ValueError(f"name: got {name!r}, allowed {list(SPLITS)}")
        if name == "test" and self.presplit and not (self.root / "test").is_dir():
            name = "val"  # no test/: the test split is val (one dataset, one preflight)
        return self._build(name, self.samples()[name], "none" if name == "train" else self.check, distributed)

    def eval_dataset(self, distributed: bool = True) -> ImageFileDataset:
        """The attack study's images: the first ``eval_subset`` test samples (all when null)."""
        if self.eval_subset is None:
            return self.split("test", distributed)
        return self._build("eval", self.samples()["test"][: self.eval_subset], self.check, distributed)

    def support_dataset(self, per_class: int | None = None, distributed: bool = True) -> ImageFileDataset:
        """The prior's support set: ``per_class`` (default ``support_per_class``) seeded train picks per class
        (undecodable picks dropped, not replaced); the whole train split, preflighted (``check``), when both
        are null: an undecodable file is skipped and counted, never handed to the feature extraction."""
        n = per_class if per_class is not None else self.support_per_class
        if n is None:
            return self._build("support", self.samples()["train"], self.check, distributed)
        if int(n) < 1:
            raise ValueError(f"per_class: got {n}, allowed a positive int or None")
        by_class: list[list[str]] = [[] for _ in self.class_names]
        for p, c in self.samples()["train"]:
            by_class[c].append(p)
        samples = []
        for c, files in enumerate(by_class):
            rng = np.random.default_rng(stable_seed(self.seed + 1, self.class_names[c]))
            samples += [(files[i], c) for i in sorted(rng.permutation(len(files))[: int(n)])]
        return self._build(f"support{int(n)}", samples, self.check, distributed)

    def setup(self, stage: str | None = None) -> None:
        """Builds the datasets a Lightning ``stage`` needs (``None``: only the class list, no image is read;
        the datasets are built when first asked for). Preflights are sharded over ranks, so under DDP
        every rank calls this together (Lightning does)."""
        _ = self.class_names
        want = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                "predict": ("test",)}.get(stage, ())
        for name in want:
            self.split(name, distributed=True)
        if stage == "predict":
            self.eval_dataset(distributed=True)

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds: ImageFileDataset, shuffle: bool = False) -> ImageFileLoader:
        return make_loader(
            ds, batch_size=self.batch_size if shuffle else self.eval_batch_size, num_workers=self.num_workers,
            shuffle=shuffle, seed=self.seed, pin_memory=self.pin_memory, image_shape=self.input_shape,
        )

    def train_dataloader(self) -> ImageFileLoader:
        return self._loader(self.split("train"), shuffle=True)

    def val_dataloader(self) -> ImageFileLoader:
        return self._loader(self.split("val"))

    def test_dataloader(self) -> ImageFileLoader:
        return self._loader(self.split("test"))

    def predict_dataloader(self) -> ImageFileLoader:
        return self._loader(self.eval_dataset())

    def support_dataloader(self, per_class: int | None = None) -> ImageFileLoader:
        """``support_dataset(per_class)`` in class order, not shuffled."""
        return self._loader(self.support_dataset(per_class))
