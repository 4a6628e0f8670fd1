"""ImageNet 2012 (ILSVRC2012) data module: validation set for evaluation, train set for support/training.

Accepted layouts (``root``):

* torchvision ``ImageNet``: ``root/train/<wnid>/*.JPEG``, ``root/val/<wnid>/*.JPEG`` and the devkit
  ``root/ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt}``.
* flat validation folder: ``root/val/ILSVRC2012_val_00000001.JPEG ...`` (or ``val_dir``) whose labels come
  from the devkit ground truth (one ILSVRC2012_ID per line, line k = image k), mapped through meta.mat.

Class index = position in the sorted leaf wnids (torchvision / pretrained-VGG order), NOT the devkit's
ILSVRC2012_ID order. Images are float (3, 224, 224) in [0, 1] (Resize(256), CenterCrop(224), ToTensor);
normalization lives inside the model.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from torchvision import transforms

from advprior.data.hierarchy import ClassHierarchy
from advprior.data.imagefiles import (
    CHECKS,
    ON_BAD_IMAGE,
    ImageFileDataset,
    ImageFileLoader,
    Sample,
    _validate_choice,
    is_image_file,
    list_images,
    make_loader,
    resolve,
    stable_seed,
)
from advprior.data.loaders import DataIdentityMixin, check_loader_args
from advprior.identity import stat_identity

log = logging.getLogger(__name__)

DEVKIT_DIRNAME = "ILSVRC2012_devkit_t12"
GROUND_TRUTH_NAME = "ILSVRC2012_validation_ground_truth.txt"
VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d+)\.[A-Za-z]+$")
SUPPORT_SELECTIONS = ("random", "first")


def eval_transform(resize_size: int = 256, image_size: int = 224) -> transforms.Compose:
    """Resize(shorter side -> resize_size), CenterCrop(image_size), ToTensor: (3, S, S) float in [0, 1]."""
    return transforms.Compose(
        [transforms.Resize(resize_size), transforms.CenterCrop(image_size), transforms.ToTensor()]
    )


def find_devkit(root: str | os.PathLike | None, devkit: str | os.PathLike | None = None) -> Path:
    """The devkit's ``data`` folder (holding meta.mat): ``devkit`` (the devkit or its data folder) or under ``root``."""
    candidates: list[Path] = []
    if devkit is not None:
        d = resolve(devkit)
        candidates = [d / "data", d]
        where = f"devkit={d}"
    else:
        if root is None:
            raise ValueError("root: got None and devkit: got None; give the ImageNet root or the devkit path")
        r = resolve(root)
        candidates = [r / DEVKIT_DIRNAME / "data", r / DEVKIT_DIRNAME, r / "data", r]
        where = f"root={r} (looked in {r / DEVKIT_DIRNAME / 'data'})"
    for c in candidates:
        if (c / "meta.mat").is_file():
            return c
    raise FileNotFoundError(
        f"ImageNet devkit not found for {where}: expected {DEVKIT_DIRNAME}/data/meta.mat "
        f"(and data/{GROUND_TRUTH_NAME}) from ILSVRC2012_devkit_t12.tar.gz; "
        "pass data.devkit=/path/to/ILSVRC2012_devkit_t12 if it lives elsewhere"
    )


def read_ground_truth(path: str | os.PathLike, hierarchy: ClassHierarchy) -> list[int]:
    """Class indices (sorted-wnid order) of the validation images; element k-1 is image k."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Validation ground truth not found at {path}: expected the devkit file "
            f"{GROUND_TRUTH_NAME} (one ILSVRC2012_ID per line, line k = ILSVRC2012_val_<k>.JPEG)"
        )
    leaves = set(hierarchy.wnids)
    id_to_class = {i: hierarchy.index(w) for w, i in hierarchy.ilsvrc2012_ids.items() if w in leaves}
    labels = []
    for lineno, line in enumerate(path.read_text().split(), start=1):
        sid = int(line)
        if sid not in id_to_class:
            raise ValueError(f"{path}:{lineno}: ILSVRC2012_ID {sid} is not a leaf class of meta.mat")
        labels.append(id_to_class[sid])
    return labels


def _val_number(path: str) -> int | None:
    m = VAL_NAME.match(os.path.basename(path))
    return int(m.group(1)) if m else None


class ImageNetDataModule(DataIdentityMixin, pl.LightningDataModule):
    """ILSVRC2012 validation/train data as ``(image, label, index)`` batches.

    Args:
        root: ImageNet root (train/, val/, ILSVRC2012_devkit_t12/).
        devkit: devkit folder (``ILSVRC2012_devkit_t12`` or its ``data``) if not under root.
        val_dir: validation folder override (flat JPEGs or one folder per wnid); default ``root/val``.
        batch_size, num_workers, pin_memory: DataLoader settings (``batch_size``: train loader).
        eval_batch_size: val/test/support loaders (default ``batch_size``).
        val_subset: use only the first N validation files in file-name order (None: all 50,000).
            Files found undecodable are dropped from those N (not replaced) and reported.
            ``eval_subset`` is an alias (the name DigitsDataModule uses).
        support_per_class: N train images per class for ``support_dataset()`` (None: the whole train set).
        support_selection: ``"random"`` (seeded choice per class) or ``"first"`` (first N files by name).
            Undecodable picks are replaced by the next candidate, so each class gets exactly N when it can.
        on_bad_image: ``"skip"`` or ``"error"``.
        check: preflight of the eval/support files: ``"decode"``, ``"header"`` or ``"none"`` (train: lazy only).
        check_cache_dir: folder caching the preflight's results per chunk of files (keyed by their names,
            sizes and modification times); None: check every run.
        seed: support choice and train shuffling.
        image_size, resize_size: CenterCrop and Resize sizes.
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        devkit: str | os.PathLike | None = None,
        val_dir: str | os.PathLike | None = None,
        batch_size: int = 64,
        num_workers: int = 4,
        val_subset: int | None = None,
        support_per_class: int | None = None,
        support_selection: str = "random",
        on_bad_image: str = "skip",
        check: str = "decode",
        seed: int = 0,
        pin_memory: bool = True,
        image_size: int = 224,
        resize_size: int = 256,
        eval_batch_size: int | None = None,
        eval_subset: int | None = None,
        check_cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if eval_subset is not None:
            if val_subset is not None and int(val_subset) != int(eval_subset):
                raise ValueError(
                    f"eval_subset: got {eval_subset} with val_subset={val_subset}; they are aliases, give one"
                )
            val_subset = eval_subset
        check_loader_args(batch_size, eval_batch_size, num_workers,
                          {"val_subset": val_subset, "support_per_class": support_per_class})
        _validate_choice("support_selection", support_selection, SUPPORT_SELECTIONS)
        _validate_choice("on_bad_image", on_bad_image, ON_BAD_IMAGE)
        _validate_choice("check", check, CHECKS)
        self.root = resolve(root) if root is not None else None
        self.devkit = devkit
        self.val_dir = resolve(val_dir) if val_dir is not None else None
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        self.num_workers = int(num_workers)
        self.val_subset = None if val_subset is None else int(val_subset)
        self.support_per_class = None if support_per_class is None else int(support_per_class)
        self.support_selection = support_selection
        self.on_bad_image = on_bad_image
        self.check = check
        self.check_cache_dir = check_cache_dir
        self.seed = int(seed)
        self.pin_memory = bool(pin_memory)
        self.image_size = int(image_size)
        self.transform = eval_transform(int(resize_size), self.image_size)
        self._hierarchy: ClassHierarchy | None = None
        self._devkit_data: Path | None = None
        self._eval: ImageFileDataset | None = None
        self._support: dict[int, ImageFileDataset] = {}
        self._train: ImageFileDataset | None = None
        self._support_all: ImageFileDataset | None = None

    # ------------------------------------------------------------------ metadata
    @property
    def devkit_data(self) -> Path:
        """The devkit ``data`` folder (meta.mat, ground truth)."""
        if self._devkit_data is None:
            self._devkit_data = find_devkit(self.root, self.devkit)
        return self._devkit_data

    @property
    def hierarchy(self) -> ClassHierarchy:
        if self._hierarchy is None:
            self._hierarchy = ClassHierarchy.from_meta_mat(self.devkit_data / "meta.mat")
        return self._hierarchy

    @property
    def num_classes(self) -> int:
        return self.hierarchy.num_classes

    @property
    def wnids(self) -> list[str]:
        return self.hierarchy.wnids

    @property
    def class_names(self) -> list[str]:
        return self.hierarchy.names

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def extra_identity(self) -> dict:
        """The devkit files (class order, hierarchy, validation labels) by size and modification time."""
        files = [self.devkit_data / "meta.mat", self.devkit_data / GROUND_TRUTH_NAME]
        return {"devkit": stat_identity([f for f in files if f.is_file()])}

    @property
    def train_dir(self) -> Path:
        if self.root is None:
            raise FileNotFoundError("root: got None, so there is no train/ folder; set data.root to the ImageNet root")
        return self.root / "train"

    # ------------------------------------------------------------------ samples
    def val_samples(self) -> list[Sample]:
        """All (or the first ``val_subset``) validation ``(path, label)`` pairs, in file-name order."""
        val = self.val_dir if self.val_dir is not None else (self.root / "val" if self.root is not None else None)
        if val is None:
            raise ValueError("root: got None and val_dir: got None; give the ImageNet root or a validation folder")
        if not val.is_dir():
            raise FileNotFoundError(
                f"Validation folder not found: {val}; expected ILSVRC2012_val_*.JPEG files (flat, labels from "
                f"the devkit's {GROUND_TRUTH_NAME}) or one sub-folder per wnid (torchvision layout)"
            )
        index = {w: i for i, w in enumerate(self.wnids)}
        with os.scandir(val) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = [e for e in entries if e.is_dir()]
        flat = [e.path for e in entries if e.is_file() and is_image_file(e.name)]
        class_dirs = [e for e in subdirs if e.name in index]
        if flat and class_dirs:
            raise ValueError(
                f"Validation folder {val} holds both image files and wnid sub-folders; use one layout"
            )
        samples: list[Sample]
        if class_dirs:
            unknown = [e.name for e in subdirs if e.name not in index]
            if unknown:
                raise ValueError(f"Validation folder {val}: sub-folders {unknown[:5]} are not classes of meta.mat")
            samples = [(p, index[e.name]) for e in class_dirs for p in list_images(e.path)]
            samples.sort(key=lambda s: (os.path.basename(s[0]), s[0]))
            self._check_against_ground_truth(samples)
        elif flat:
            gt_path = self.devkit_data / GROUND_TRUTH_NAME
            labels = read_ground_truth(gt_path, self.hierarchy)
            samples = []
            for p in sorted(flat, key=os.path.basename):
                k = _val_number(p)
                if k is None:
                    raise ValueError(
                        f"Flat validation folder {val}: file {os.path.basename(p)} is not named "
                        "ILSVRC2012_val_<number>.JPEG, so its label cannot be read from the ground truth"
                    )
                if not 1 <= k <= len(labels):
                    raise ValueError(f"{p}: image number {k} outside the {len(labels)} lines of {gt_path}")
                samples.append((p, labels[k - 1]))
        elif subdirs:
            raise ValueError(
                f"Validation folder {val}: sub-folders {[e.name for e in subdirs][:5]} are not classes of "
                f"{self.devkit_data / 'meta.mat'} and there are no ILSVRC2012_val_*.JPEG files"
            )
        else:
            raise FileNotFoundError(f"Validation folder {val} holds no images and no wnid sub-folders")
        if self.val_subset is not None:
            samples = samples[: self.val_subset]
        return samples

    def _check_against_ground_truth(self, samples: list[Sample]) -> None:
        """Folder labels of ILSVRC2012_val_* files must agree with the devkit ground truth when present."""
        gt_path = self.devkit_data / GROUND_TRUTH_NAME
        if not gt_path.is_file():
            return
        labels = read_ground_truth(gt_path, self.hierarchy)
        for p, y in samples:
            k = _val_number(p)
            if k is not None and 1 <= k <= len(labels) and labels[k - 1] != y:
                raise ValueError(
                    f"{p} lies in the folder of class {self.wnids[y]} but {gt_path} says "
                    f"{self.wnids[labels[k - 1]]}; the validation folders disagree with the devkit"
                )

    def train_files(self) -> list[list[str]]:
        """Train image paths per class (class-index order), each sorted by name."""
        train = self.train_dir
        if not train.is_dir():
            raise FileNotFoundError(
                f"Train folder not found: {train}; the support set and training need ImageNet train images "
                "as train/<wnid>/*.JPEG (set data.support_per_class=null if no support set is needed)"
            )
        out = []
        for w in self.wnids:
            d = train / w
            out.append(list_images(d) if d.is_dir() else [])
        missing = [w for w, f in zip(self.wnids, out) if not f]
        if missing:
            log.warning("%s: %d classes have no train images (e.g. %s)", train, len(missing), missing[:3])
        return out

    def _support_candidates(self, files: list[str], cls: int) -> list[str]:
        if self.support_selection == "first":
            return files
        rng = np.random.default_rng(stable_seed(self.seed, self.wnids[cls]))
        return [files[i] for i in rng.permutation(len(files))]

    # ------------------------------------------------------------------ datasets
    def _dataset(self, samples: list[Sample], name: str, check: str, distributed: bool) -> ImageFileDataset:
        return ImageFileDataset(
            samples, self.transform, on_bad_image=self.on_bad_image, check=check, name=name,
            distributed=distributed, cache_dir=self.check_cache_dir,
        )

    def build_support(self, per_class: int, distributed: bool = False) -> ImageFileDataset:
        """``per_class`` decodable train images per class, deterministic given ``seed``."""
        n = int(per_class)
        candidates = [self._support_candidates(f, c) for c, f in enumerate(self.train_files())]
        chosen: list[list[str]] = [[] for _ in candidates]
        cursor = [0] * len(candidates)
        skipped: list[str] = []
        # take N candidates per class; replace the undecodable ones with the next candidates, in rounds
        while True:
            todo = [(c, p) for c, cand in enumerate(candidates)
                    for p in cand[cursor[c]: cursor[c] + n - len(chosen[c])]]
            if not todo:
                break
            for c in range(len(candidates)):
                cursor[c] = min(len(candidates[c]), cursor[c] + n - len(chosen[c]))
            ds = self._dataset([(p, c) for c, p in todo], "support", self.check, distributed)
            skipped += ds.bad_files
            for p, c in ds.samples:
                chosen[c].append(p)
        short = [self.wnids[c] for c, got in enumerate(chosen) if len(got) < n]
        if short:
            log.warning("support set: %d classes have fewer than %d usable train images (e.g. %s)",
                        len(short), n, short[:3])
        samples = [(p, c) for c, ps in enumerate(chosen) for p in ps]
        return ImageFileDataset(
            samples, self.transform, on_bad_image=self.on_bad_image, check="none", name="support",
            distributed=False, known_bad=skipped,
        )

    def eval_dataset(self) -> ImageFileDataset:
        """The attack study's images: the first ``val_subset`` validation files (all when null), preflighted
        on first use (under DDP every rank must make that first call together)."""
        if self._eval is None:
            self._eval = self._dataset(self.val_samples(), "val", self.check, distributed=True)
        return self._eval

    def support_dataset(self, per_class: int | None = None) -> ImageFileDataset:
        """The prior's support set: ``per_class`` (default ``support_per_class``) train images per class;
        the whole train set, preflighted (``check``; undecodable files skipped and counted), when both are null."""
        per_class = per_class if per_class is not None else self.support_per_class
        if per_class is None:
            if self._support_all is None:  # preflighted: the feature extraction never meets a bad file
                samples = [(p, c) for c, files in enumerate(self.train_files()) for p in files]
                self._support_all = self._dataset(samples, "support", self.check, distributed=False)
            return self._support_all
        if int(per_class) < 1:
            raise ValueError(f"per_class: got {per_class}, allowed a positive int or None")
        if int(per_class) not in self._support:
            self._support[int(per_class)] = self.build_support(int(per_class), distributed=True)
        return self._support[int(per_class)]

    def train_dataset(self) -> ImageFileDataset:
        """All train images; no preflight (1.28M files): undecodable ones are dropped by the loaders' collate."""
        if self._train is None:
            samples = [(p, c) for c, files in enumerate(self.train_files()) for p in files]
            self._train = self._dataset(samples, "train", "none", distributed=False)
        return self._train

    def split(self, name: str) -> ImageFileDataset:
        """``"train"``: ``train_dataset()``; ``"val"`` / ``"test"``: ``eval_dataset()``."""
        if name == "train":
            return self.train_dataset()
        if name in ("val", "test"):
            return self.eval_dataset()
        raise ValueError(f"name: got {name!r}, allowed 'train', 'val', 'test'")

    def setup(self, stage: str | None = None) -> None:
        """Builds what a Lightning ``stage`` needs (``None``: only the class metadata, no image is read; the
        datasets are built when first asked for). The preflights are sharded over ranks, so under DDP
        every rank calls this together (Lightning does)."""
        _ = self.hierarchy
        if stage in ("fit", "validate", "test", "predict"):
            self.eval_dataset()
        if stage == "fit":
            self.train_dataset()  # raises, naming the missing folder, when train/ is absent

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds: ImageFileDataset, shuffle: bool = False, eval: bool = True) -> ImageFileLoader:
        return make_loader(
            ds, batch_size=self.eval_batch_size if eval else self.batch_size, num_workers=self.num_workers,
            shuffle=shuffle, seed=self.seed, pin_memory=self.pin_memory, image_shape=self.input_shape,
        )

    def val_dataloader(self) -> ImageFileLoader:
        return self._loader(self.eval_dataset())

    def test_dataloader(self) -> ImageFileLoader:
        return self._loader(self.eval_dataset())

    def predict_dataloader(self) -> ImageFileLoader:
        return self._loader(self.eval_dataset())

    def support_dataloader(self, per_class: int | None = None) -> ImageFileLoader:
        """``support_dataset(per_class)`` in class order, not shuffled."""
        return self._loader(self.support_dataset(per_class))

    def train_dataloader(self) -> ImageFileLoader:
        return self._loader(self.train_dataset(), shuffle=True, eval=False)
