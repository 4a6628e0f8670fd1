"""Schema of the top-level keys of ``conf/config.yaml`` (the groups are added from ``groups.GROUPS``)."""
from dataclasses import dataclass, field
from typing import List, Optional

from . import rules


@dataclass
class ComputeConfig:
    """How the image stages run (the Trainer itself is the ``trainer`` group)."""

    channels_last: bool = False        # NHWC models and images in the attack, feature and defense loops
    timeout_minutes: float = 240       # how long a rank waits for the others before failing
    gpus_per_job: Optional[int] = None  # parallel sweeps (hydra/launcher=joblib): GPUs per job

    def __post_init__(self) -> None:
        rules.number_in(self, "timeout_minutes", 0, low_open=True)
        rules.positive_int(self, "gpus_per_job", null="trainer.devices")


@dataclass
class RootConfig:
    task_name: str = "run"
    seed: int = 0
    target_model: Optional[str] = None
    stages: Optional[List[str]] = None
    optimized_metric: Optional[str] = None
    wandb_group: Optional[str] = None
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def __post_init__(self) -> None:
        rules.int_at_least(self, "seed", 0)
        if not (isinstance(self.task_name, str) and self.task_name.strip() and "/" not in self.task_name):
            rules.fail(self, "task_name", "must be a non-empty name without '/' (it names the run directory)")
