"""Schemas of the stage groups: ``attack`` (the FGSM study), ``prior`` and ``defense``."""
from dataclasses import dataclass, field
from typing import Any, List, Optional

from . import rules
from .errors import fmt

BANDWIDTH_RULES = ("scott", "silverman", "cv", "loo", "heldout")
KERNEL_COVS = ("isotropic", "full")
# the option lists of the library (not imported here: the schemas load without torch); tested equal
SPACES = ("per_class", "shared")  # advprior.prior.class_prior.SPACES
LOSSES = ("ce", "margin")  # advprior.attacks.losses.LOSSES
SCHEDULES = ("constant", "cosine")  # advprior.attacks.pgd.SCHEDULES


@dataclass
class ConaturalConfig:
    max_distance: int = 4
    nearest_k: int = 1

    def __post_init__(self) -> None:
        rules.int_at_least(self, "max_distance", 0)
        rules.positive_int(self, "nearest_k")


@dataclass
class AttackConfig:
    epsilons: List[float] = field(default_factory=lambda: [0.85, 2, 4, 8, 16, 32])
    scale: float = 255.0
    figure_eps: float = 0.85
    labels: Any = True  # true | predicted (OmegaConf 2.3 cannot merge a Union[bool, str] node)
    high_conf_threshold: float = 0.5
    refocus_min_prob: float = 0.05
    conatural: ConaturalConfig = field(default_factory=ConaturalConfig)
    transfer: bool = True
    shard_size: int = 2048
    n_boot: int = 1000
    grid_samples: int = 8
    wandb_table_rows: int = 5000

    def __post_init__(self) -> None:
        rules.number_in(self, "scale", 0, low_open=True)
        rules.epsilons(self)
        if not any(abs(e / self.scale - self.figure_eps / self.scale) < 1e-12 for e in self.epsilons):
            rules.fail(self, "figure_eps", f"must be one of {{epsilons}}={fmt(self.epsilons)}",
                       example=self.epsilons[0])
        if not (self.labels is True or (isinstance(self.labels, str) and self.labels.lower() in ("true", "predicted"))):
            rules.fail(self, "labels", "must be true (attack the true labels, as the paper) or predicted (attack "
                       "the model's own clean predictions)", example="predicted" if self.labels is True else True)
        rules.number_in(self, "high_conf_threshold", 0, 1)
        rules.number_in(self, "refocus_min_prob", 0, 1)
        rules.positive_int(self, "shard_size")
        rules.positive_int(self, "n_boot")
        rules.positive_int(self, "grid_samples")
        rules.int_at_least(self, "wandb_table_rows", 0)


@dataclass
class AutoencoderTrainConfig:
    epochs: int = 60
    batch_size: int = 32
    lr: float = 0.001
    patience: Optional[int] = None
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        rules.positive_int(self, "epochs")
        rules.positive_int(self, "batch_size")
        rules.number_in(self, "lr", 0, low_open=True)
        rules.positive_int(self, "patience", null="no early stopping: every epoch runs")
        rules.number_in(self, "min_delta", 0)


@dataclass
class PriorConfig:
    feature_layer: str = "fc6"
    support_per_class: Optional[int] = None
    space: str = "per_class"
    n_components: int = 32
    bottleneck: int = 4
    depth: Optional[int] = None
    negative_slope: float = 0.33
    standardize: bool = False
    val_fraction: float = 0.0
    bandwidth: Any = "scott"  # a number > 0 or a rule; OmegaConf's Union[float, str] would refuse an int
    kernel_cov: str = "isotropic"
    cv_folds: int = 5
    weight: float = 1.0
    top_k: Optional[int] = None
    shard_size: int = 4096
    ae: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)

    def __post_init__(self) -> None:
        rules.non_empty_str(self, "feature_layer", "a layer name of the target model")
        rules.positive_int(self, "support_per_class", null="data.support_per_class")
        rules.positive_int(self, "n_components")
        rules.positive_int(self, "bottleneck")
        if self.bottleneck >= self.n_components:
            rules.fail(self, "bottleneck", f"must be smaller than {{n_components}}={self.n_components} (the "
                       "autoencoder compresses the PCA coefficients)", example=max(1, self.n_components // 8))
        rules.int_at_least(self, "depth", 0, null="halve the width down to the bottleneck")
        rules.number_in(self, "negative_slope", 0)
        bw = self.bandwidth
        if not (bw in BANDWIDTH_RULES if isinstance(bw, str) else rules.is_number(bw) and bw > 0):
            rules.fail(self, "bandwidth", f"must be a positive number or one of {', '.join(BANDWIDTH_RULES)}")
        rules.one_of(self, "kernel_cov", KERNEL_COVS)
        rules.one_of(self, "space", SPACES)
        rules.number_in(self, "val_fraction", 0, 1, high_open=True)
        needs = (["bandwidth=heldout"] if self.bandwidth == "heldout" else []) + (
            [f"ae.patience={self.ae.patience}"] if self.ae.patience is not None else [])
        if needs and not self.val_fraction:
            rules.fail(self, "val_fraction", f"must be > 0 for {' and '.join(needs)}: held-out support points",
                       example=0.2)
        rules.int_at_least(self, "cv_folds", 2)
        rules.number_in(self, "weight", 0)
        rules.positive_int(self, "top_k", null="the exact posterior over all classes")
        rules.positive_int(self, "shard_size")


@dataclass
class PGDConfig:
    steps: int = 20
    restarts: int = 1
    alpha_factor: float = 1.0
    schedule: str = "cosine"
    random_start: bool = True
    loss: str = "margin"

    def __post_init__(self) -> None:
        rules.int_at_least(self, "steps", 0)
        rules.positive_int(self, "restarts")
        if self.restarts > 1 and not self.random_start:
            rules.fail(self, "restarts", "must be 1 without random_start (every restart would be the same "
                       "attack)", example=1, fix="or set defense.adaptive.pgd.random_start=true")
        rules.number_in(self, "alpha_factor", 0, low_open=True)
        rules.one_of(self, "schedule", SCHEDULES)
        rules.one_of(self, "loss", LOSSES)


@dataclass
class DetectorAwareConfig:
    enabled: bool = True
    c: float = 10.0

    def __post_init__(self) -> None:
        rules.number_in(self, "c", 0)


@dataclass
class AdaptiveConfig:
    loss: str = "margin"
    fgsm: bool = True
    pgd: PGDConfig = field(default_factory=PGDConfig)
    detector_aware: DetectorAwareConfig = field(default_factory=DetectorAwareConfig)

    def __post_init__(self) -> None:
        rules.one_of(self, "loss", LOSSES)


@dataclass
class DefenseConfig:
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    panels: int = 6
    shard_size: int = 512  # images per resumable shard

    def __post_init__(self) -> None:
        rules.int_at_least(self, "panels", 0)
        rules.positive_int(self, "shard_size")


@dataclass
class ActivationsConfig:
    """Settings of the ``activations`` stage. Epsilons are on the attack's scale (``attack.scale``, 255).

    layers: layers of the Figure 7/8 heat maps (conv or pool layers of the target model); ``[]`` draws no
    example figures. epsilons: the eps values of the layer-wise change, a subset of ``attack.epsilons``
    (null: all). change_layers: layers of the relative change (each model records those it has; null: every
    named layer). figure_eps: the eps of the Figure 7/8 examples (null: ``attack.figure_eps``).
    examples_per_category: high-confidence examples drawn per category (0: none).
    """

    layers: List[str] = field(default_factory=lambda: ["conv1_2", "conv3_1", "conv5_1"])
    epsilons: Optional[List[float]] = None
    change_layers: Optional[List[str]] = None
    figure_eps: Optional[float] = None
    examples_per_category: int = 1

    def __post_init__(self) -> None:
        for key, empty_ok in (("layers", True), ("change_layers", False)):
            v = getattr(self, key)
            if v is None and key == "change_layers":
                continue
            if not (isinstance(v, (list, tuple)) and all(isinstance(n, str) and n for n in v)
                    and (empty_ok or len(v)) and len(set(v)) == len(v)):
                rules.fail(self, key, "must be a list of distinct layer names" + ("" if empty_ok else
                           ", not empty (null: every named layer)"), example=["conv1_2", "conv3_1"])
        eps = self.epsilons
        if eps is not None and not (isinstance(eps, (list, tuple)) and len(eps)
                                    and all(rules.is_number(e) and e >= 0 for e in eps)):
            rules.fail(self, "epsilons", "must be null (the study's) or a non-empty list of numbers >= 0 taken "
                       "from attack.epsilons", example=[0.85])
        rules.number_in(self, "figure_eps", 0, null="attack.figure_eps")
        rules.int_at_least(self, "examples_per_category", 0)
