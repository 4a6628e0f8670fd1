"""Schemas of the ``model`` entries (``model.<name>``), one per builder (told apart by ``_target_``).
Fields are the builder's arguments except those filled from the data (num_classes, in_channels,
image_size), plus ``frozen`` and ``train`` (read by the train stage)."""
from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

from omegaconf import MISSING

from . import rules

LR_SCHEDULES = ("cosine", "none")
VGG_ARCHS = ("vgg16", "vgg19", "vgg19_bn")  # advprior.models.vgg.ARCHS (a test keeps them equal)


@dataclass
class OptimizerConfig:
    """A torch optimizer, completed with the model's parameters by the train stage (so ``_partial_``)."""
    open_keys: ClassVar[bool] = True  # other optimizer arguments (momentum, betas...) pass through

    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 0.001
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self._partial_ is not True:
            rules.fail(self, "_partial_", "must be true (the train stage passes the model's parameters)", True)
        rules.number_in(self, "lr", 0, low_open=True)
        rules.number_in(self, "weight_decay", 0)


@dataclass
class TrainConfig:
    epochs: int = 6
    lr_schedule: Optional[str] = "cosine"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self) -> None:
        rules.positive_int(self, "epochs")
        rules.one_of(self, "lr_schedule", LR_SCHEDULES, null="constant")


def _dropout(cfg: object) -> None:
    rules.number_in(cfg, "dropout", 0, 1, high_open=True)


@dataclass
class VggSmallConfig:
    _target_: str = "advprior.models.vgg_small.build_vgg_small"
    widths: List[int] = field(default_factory=lambda: [16, 32, 32, 64, 64])
    convs_per_block: List[int] = field(default_factory=lambda: [2, 2, 2, 2, 2])
    hidden: int = 256
    dropout: float = 0.3
    batch_norm: bool = True
    frozen: bool = True
    train: Optional[TrainConfig] = field(default_factory=TrainConfig)
    checkpoint: Optional[str] = None  # a state dict to load (weights_only=True); usually with train=null
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None

    def __post_init__(self) -> None:
        rules.int_list(self, "widths")
        rules.int_list(self, "convs_per_block")
        if len(self.convs_per_block) != len(self.widths):
            rules.fail(self, "convs_per_block", f"must have one entry per block: {{widths}} has {len(self.widths)}",
                       example=[2] * len(self.widths))
        rules.positive_int(self, "hidden")
        _dropout(self)


@dataclass
class ShallowConfig:
    _target_: str = "advprior.models.shallow.build_shallow"
    hidden: int = 0
    dropout: float = 0.0
    frozen: bool = True
    train: Optional[TrainConfig] = field(default_factory=TrainConfig)
    checkpoint: Optional[str] = None  # a state dict to load (weights_only=True); usually with train=null
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None

    def __post_init__(self) -> None:
        rules.int_at_least(self, "hidden", 0)
        _dropout(self)


def _check_torchvision_weights(cfg: object) -> None:
    """``weights`` and ``checkpoint`` of a torchvision model's schema (VGG, AlexNet)."""
    rules.one_of(cfg, "weights", ("imagenet", "none"), null="random initialization")
    if cfg.checkpoint is not None:
        rules.non_empty_str(cfg, "checkpoint", "a state dict file or null", example=None)


@dataclass
class TorchvisionVggConfig:
    _target_: str = "advprior.models.vgg.build_torchvision_vgg"
    arch: str = "vgg19"
    weights: Optional[str] = "imagenet"
    allow_download: bool = False
    checkpoint: Optional[str] = None
    frozen: bool = True
    train: Optional[TrainConfig] = None

    def __post_init__(self) -> None:
        rules.one_of(self, "arch", VGG_ARCHS)
        _check_torchvision_weights(self)


@dataclass
class TorchvisionAlexNetConfig:
    _target_: str = "advprior.models.alexnet.build_torchvision_alexnet"
    weights: Optional[str] = "imagenet"
    allow_download: bool = False
    checkpoint: Optional[str] = None
    frozen: bool = True
    train: Optional[TrainConfig] = None

    def __post_init__(self) -> None:
        _check_torchvision_weights(self)


@dataclass
class ModelConfig:
    """Any other builder: only the keys the train stage reads are checked; its arguments pass through."""
    open_keys: ClassVar[bool] = True

    _target_: str = MISSING
    frozen: bool = True
    train: Optional[TrainConfig] = None

    def __post_init__(self) -> None:
        rules.non_empty_str(self, "_target_", "a builder's import path", "advprior.models.vgg_small.build_vgg_small")
