"""Schemas of the groups that say how a run executes: ``trainer``, ``callbacks``, ``logger``, ``paths``, ``extras``."""
from dataclasses import dataclass, field
from typing import Any, ClassVar, List, Optional

from omegaconf import MISSING

from . import rules

# Lightning's accepted values (lightning_fabric's _PRECISION_INPUT, the accelerator registry plus its
# aliases); a test keeps them equal to the installed Lightning.
# Adversarial images stay float32 and float16 input gradients underflow: the image stages run in float32 or
# with bfloat16 forward passes only (``advprior.loops``); training uses the same setting.
PRECISIONS = (32, "32", "32-true", "bf16-mixed")
SPAWNING_STRATEGIES = ("spawn", "fork", "notebook")  # a new process per Lightning call: not for a pipeline
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def _devices_ok(v: object) -> bool:
    if rules.is_int(v):
        return v >= 1 or v == -1
    if isinstance(v, str):
        parts = [p.strip() for p in v.split(",") if p.strip()]
        return v == "auto" or (bool(parts) and all(p.lstrip("-").isdigit() for p in parts))
    if isinstance(v, (list, tuple)):
        return bool(v) and all(rules.is_int(d) and d >= 0 for d in v)
    return False


def _limit_ok(v: object) -> bool:
    if v is None or rules.is_int(v):
        return v is None or v >= 0
    return rules.is_number(v) and 0 <= v <= 1


@dataclass
class TrainerConfig:
    """The Lightning Trainer's arguments used by the configs; any other Trainer argument passes through
    (``+trainer.gradient_clip_val=1.0``) and Lightning checks it."""
    open_keys: ClassVar[bool] = True

    _target_: str = "pytorch_lightning.Trainer"
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: Any = "32-true"
    deterministic: Any = False
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = 0
    max_epochs: Optional[int] = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    sync_batchnorm: bool = False
    num_nodes: int = 1

    def __post_init__(self) -> None:
        rules.one_of(self, "accelerator", ACCELERATORS)
        if not _devices_ok(self.devices):
            rules.fail(self, "devices", "must be a positive number of devices, -1 (all), auto, a list of device "
                       "indices or a string like '0,1'")
        rules.non_empty_str(self, "strategy", "a Lightning strategy name (auto, ddp, fsdp...)")
        if any(s in self.strategy for s in SPAWNING_STRATEGIES):
            rules.fail(self, "strategy", "starts new processes inside every Lightning call, but each stage of the "
                       "pipeline runs on every rank", example="ddp", fix="use trainer=ddp, e.g. trainer=ddp "
                       "trainer.devices=8")
        if isinstance(self.precision, bool) or self.precision not in PRECISIONS:
            rules.fail(self, "precision", "must be 32-true or bf16-mixed: adversarial images stay float32 and "
                       "float16 input gradients underflow (bf16-mixed runs only the models' forward passes in "
                       "bfloat16)", example="bf16-mixed")
        rules.positive_int(self, "num_nodes")
        if not (isinstance(self.deterministic, bool) or self.deterministic == "warn"):
            rules.fail(self, "deterministic", "must be true, false or warn")
        rules.positive_int(self, "log_every_n_steps")
        rules.int_at_least(self, "num_sanity_val_steps", -1)
        rules.positive_int(self, "max_epochs", null="each model's own train.epochs")
        for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            if not _limit_ok(getattr(self, name)):
                rules.fail(self, name, "must be a number of batches (an integer >= 0), a fraction in [0, 1] or "
                           "null (all)", example=2)


@dataclass
class FGSMEvalCallbackConfig:
    """``advprior.callbacks.FGSMEvalCallback``'s arguments (the defaults follow ``attack``)."""
    _target_: str = "advprior.callbacks.FGSMEvalCallback"
    epsilons: List[float] = field(default_factory=lambda: [0.85, 2, 4, 8, 16, 32])
    scale: float = 255.0
    num_images: int = 256
    batch_size: int = 128
    every_n_epochs: int = 1
    prefix: str = "val_attack"
    high_conf_threshold: float = 0.5
    use_true_labels: bool = True
    dataloader_idx: int = 0

    def __post_init__(self) -> None:
        rules.number_in(self, "scale", 0, low_open=True)
        rules.epsilons(self)
        rules.positive_int(self, "num_images")
        rules.positive_int(self, "batch_size")
        rules.positive_int(self, "every_n_epochs")
        if not (isinstance(self.prefix, str) and self.prefix.strip("/") and self.prefix == self.prefix.strip("/")):
            rules.fail(self, "prefix", "must be a non-empty name without a leading or trailing '/'")
        rules.number_in(self, "high_conf_threshold", 0, 1)
        rules.int_at_least(self, "dataloader_idx", 0)


@dataclass
class TargetConfig:
    """Any other object built from ``_target_``: its arguments pass through unchecked."""
    open_keys: ClassVar[bool] = True

    _target_: str = MISSING

    def __post_init__(self) -> None:
        rules.non_empty_str(self, "_target_", "an import path")


@dataclass
class WandbLoggerConfig:
    open_keys: ClassVar[bool] = True  # any other WandbLogger / wandb.init argument passes through

    _target_: str = "advprior.utils.loggers.RunWandbLogger"
    project: str = "advprior"
    name: Optional[str] = None
    save_dir: str = "."
    offline: bool = True
    group: Optional[str] = None
    job_type: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    log_model: Any = False

    def __post_init__(self) -> None:
        rules.non_empty_str(self, "project", "a W&B project name")
        rules.non_empty_str(self, "save_dir", "a directory")
        if self.log_model not in (True, False, "all"):
            rules.fail(self, "log_model", "must be true, false or all")


@dataclass
class CSVLoggerConfig:
    open_keys: ClassVar[bool] = True

    _target_: str = "pytorch_lightning.loggers.CSVLogger"
    save_dir: str = "."
    name: Optional[str] = "csv"
    version: Any = ""

    def __post_init__(self) -> None:
        rules.non_empty_str(self, "save_dir", "a directory")


@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: str = MISSING
    log_dir: str = MISSING
    store_dir: str = MISSING
    output_dir: str = MISSING

    def __post_init__(self) -> None:
        for name in ("root_dir", "data_dir", "log_dir", "store_dir", "output_dir"):
            rules.non_empty_str(self, name, "a directory")


@dataclass
class ExtrasConfig:
    rich_progress: bool = True   # progress bars while a loop runs, on a terminal only
    print_config: bool = False   # print the config tree at start (always saved as config_tree.txt, config.yaml)
