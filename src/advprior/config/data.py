"""Schemas of the ``data`` options, one per DataModule (told apart by ``_target_``). Fields are the
DataModule's constructor arguments; the defaults are those of ``conf/data/<option>.yaml``."""
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from omegaconf import MISSING

from . import rules

# The allowed values of the image-file options (advprior.data.imagefiles / imagenet; a test keeps them equal).
ON_BAD_IMAGE = ("skip", "error")
CHECKS = ("decode", "header", "none")
SUPPORT_SELECTIONS = ("random", "first")


def _loader_checks(cfg: object, eval_batch_null: str | None = "= batch_size") -> None:
    rules.positive_int(cfg, "batch_size")
    rules.positive_int(cfg, "eval_batch_size", null=eval_batch_null)
    rules.int_at_least(cfg, "num_workers", 0)
    rules.int_at_least(cfg, "seed", 0)
    rules.positive_int(cfg, "eval_subset", null="all")
    rules.positive_int(cfg, "support_per_class", null="all")


def _image_file_checks(cfg: object) -> None:
    rules.positive_int(cfg, "image_size")
    rules.one_of(cfg, "on_bad_image", ON_BAD_IMAGE)
    rules.one_of(cfg, "check", CHECKS)
    if cfg.resize_size is not None:
        rules.positive_int(cfg, "resize_size")
        if cfg.resize_size < cfg.image_size:
            rules.fail(cfg, "resize_size", f"must be >= {{image_size}}={cfg.image_size} (images are resized to "
                       "resize_size, then center-cropped to image_size)", example=cfg.image_size)


@dataclass
class DigitsConfig:
    cheap_splits: ClassVar[bool] = True  # the prior's support size is checked from the real split up front

    _target_: str = "advprior.data.digits.DigitsDataModule"
    image_size: int = 32
    channels: int = 1
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0
    seed: int = 0
    eval_subset: Optional[int] = None
    support_per_class: Optional[int] = None

    def __post_init__(self) -> None:
        rules.int_at_least(self, "image_size", 8)
        rules.one_of(self, "channels", (1, 3))
        rules.number_in(self, "val_fraction", 0, 1, low_open=True, high_open=True)
        rules.number_in(self, "test_fraction", 0, 1, low_open=True, high_open=True)
        if self.val_fraction + self.test_fraction >= 1:
            rules.fail(self, "test_fraction", f"plus {{val_fraction}}={self.val_fraction:g} must be below 1 "
                       "(the training split gets the rest)")
        _loader_checks(self, eval_batch_null=None)


@dataclass
class FolderConfig:
    _target_: str = "advprior.data.folder.FolderDataModule"
    root: str = field(default=MISSING, metadata={"help": "the image folder", "example": "/data/my_images"})
    image_size: int = 64
    channels: int = 3
    batch_size: int = 64
    num_workers: int = 2
    on_bad_image: str = "skip"
    seed: int = 0
    resize_size: Optional[int] = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    eval_batch_size: Optional[int] = None
    eval_subset: Optional[int] = None
    support_per_class: Optional[int] = None
    check: str = "decode"
    pin_memory: bool = True
    check_cache_dir: Optional[str] = None  # decode-check results per 1024 files (null: not cached)

    def __post_init__(self) -> None:
        rules.non_empty_str(self, "root", "the dataset folder", example="/data/my_images")
        _image_file_checks(self)
        rules.one_of(self, "channels", (1, 3))
        rules.number_in(self, "val_fraction", 0, 1, high_open=True)
        rules.number_in(self, "test_fraction", 0, 1, high_open=True)
        if self.val_fraction + self.test_fraction >= 1:
            rules.fail(self, "test_fraction", f"plus {{val_fraction}}={self.val_fraction:g} must be below 1 "
                       "(the training split gets the rest)")
        _loader_checks(self)


@dataclass
class ImageNetConfig:
    _target_: str = "advprior.data.imagenet.ImageNetDataModule"
    root: Optional[str] = None
    devkit: Optional[str] = None
    val_dir: Optional[str] = None
    batch_size: int = 32
    num_workers: int = 4
    eval_subset: Optional[int] = 1000
    support_per_class: Optional[int] = 300
    on_bad_image: str = "skip"
    seed: int = 0
    val_subset: Optional[int] = None
    support_selection: str = "random"
    check: str = "decode"
    pin_memory: bool = True
    check_cache_dir: Optional[str] = None  # decode-check results per 1024 files (null: not cached)
    image_size: int = 224
    resize_size: int = 256
    eval_batch_size: Optional[int] = None

    def __post_init__(self) -> None:
        if self.root is None and self.val_dir is None:
            rules.fail(self, "root", "must be the ImageNet folder (train/, val/, ILSVRC2012_devkit_t12/) unless "
                       "{val_dir} is given", example="/data/imagenet")
        _image_file_checks(self)
        rules.one_of(self, "support_selection", SUPPORT_SELECTIONS)
        rules.positive_int(self, "val_subset", null="= eval_subset")
        if self.val_subset is not None and self.eval_subset is not None and self.val_subset != self.eval_subset:
            rules.fail(self, "val_subset", f"is an alias of {{eval_subset}}={self.eval_subset}; give one of them",
                       example=None)
        _loader_checks(self)
