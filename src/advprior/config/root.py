"""Schema of the top-level keys of ``conf/config.yaml`` (the groups are added from ``groups.GROUPS``)."""
from dataclasses import dataclass
from typing import List, Optional

from . import rules


@dataclass
class RootConfig:
    task_name: str = "run"
    seed: int = 0
    target_model: Optional[str] = None
    stages: Optional[List[str]] = None
    optimized_metric: Optional[str] = None
    wandb_group: Optional[str] = None

    def __post_init__(self) -> None:
        rules.int_at_least(self, "seed", 0)
        if not (isinstance(self.task_name, str) and self.task_name.strip() and "/" not in self.task_name):
            rules.fail(self, "task_name", "must be a non-empty name without '/' (it names the run directory)")
