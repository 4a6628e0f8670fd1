"""Structured configs: a dataclass schema per config group (``groups.GROUPS``), registered in Hydra's
ConfigStore on import, and ``validate_config`` that checks a composed config before any work."""
from .errors import ConfigError
from .groups import GROUPS, EntriesOf, OneOf, register_configs
from .validate import CROSS_CHECKS, check_node, validate_config

register_configs()

__all__ = ["ConfigError", "GROUPS", "OneOf", "EntriesOf", "CROSS_CHECKS", "check_node", "validate_config",
           "register_configs"]
