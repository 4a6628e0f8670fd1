"""The one place where config groups get their schemas (``GROUPS``), and their registration in Hydra's
ConfigStore.

A new group: write a dataclass for it (fields = its keys with their defaults, checks in ``__post_init__``
raising ``ConfigError`` via ``advprior.config.rules``) and add ONE line to ``GROUPS``, e.g.
``"fooling": FoolingConfig,``. The group is then typed when Hydra composes (wrong types and unknown keys in
its YAML fail at once), and ``validate_config`` checks its values before any work, in ``GROUPS`` order
(a group that interpolates another's values comes after it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

from hydra.core.config_store import ConfigStore

from .data import DigitsConfig, FolderConfig, ImageNetConfig
from .models import ModelConfig, ShallowConfig, TorchvisionAlexNetConfig, TorchvisionVggConfig, VggSmallConfig
from .root import RootConfig
from .runtime import (
    CSVLoggerConfig,
    ExtrasConfig,
    FGSMEvalCallbackConfig,
    PathsConfig,
    TargetConfig,
    TrainerConfig,
    WandbLoggerConfig,
)
from .fooling import FoolingConfig
from .stages import ActivationsConfig, AttackConfig, DefenseConfig, PriorConfig


@dataclass(frozen=True)
class OneOf:
    """A group whose options are different objects, told apart by ``_target_``: {option name: schema}.
    ``other``: the schema for a ``_target_`` not listed (a user's own class)."""
    options: Dict[str, type]
    other: type = TargetConfig

    def schema_for(self, target: object) -> type:
        for schema in self.options.values():
            if schema._target_ == target:
                return schema
        return self.other


@dataclass(frozen=True)
class EntriesOf(OneOf):
    """A group that is a dict ``name -> object config`` (several options at once, e.g. ``model=[a,b]``);
    each entry is checked by the schema of its ``_target_``."""


GroupSchema = Union[type, OneOf, EntriesOf]

# Checked in this order. YAML options of a OneOf/EntriesOf group extend their schema in their defaults list
# (conf/data/digits.yaml: ``- /schema/data/digits@_here_``; conf/model/vgg19.yaml:
# ``- /schema/model/torchvision_vgg@vgg19``).
GROUPS: dict[str, GroupSchema] = {
    "paths": PathsConfig,
    "extras": ExtrasConfig,
    "trainer": TrainerConfig,
    "data": OneOf({"digits": DigitsConfig, "imagenet": ImageNetConfig, "folder": FolderConfig}),
    "model": EntriesOf({"vgg_small": VggSmallConfig, "shallow": ShallowConfig,
                        "torchvision_vgg": TorchvisionVggConfig, "torchvision_alexnet": TorchvisionAlexNetConfig},
                       other=ModelConfig),
    "attack": AttackConfig,
    "prior": PriorConfig,
    "defense": DefenseConfig,
    "fooling": FoolingConfig,
    "activations": ActivationsConfig,
    "callbacks": EntriesOf({"fgsm_eval": FGSMEvalCallbackConfig}),
    "logger": EntriesOf({"wandb": WandbLoggerConfig, "csv": CSVLoggerConfig}),
}


def root_schema() -> type:
    """The top-level schema: ``RootConfig``'s keys plus one field per group (typed by its schema where the
    group has one; ``Any`` / ``Dict[str, Any]`` where the options bring their own)."""
    fields = []
    for name, spec in GROUPS.items():
        if isinstance(spec, EntriesOf):
            fields.append((name, Dict[str, Any], field(default_factory=dict)))
        elif isinstance(spec, OneOf):
            fields.append((name, Any, field(default=None)))
        else:
            fields.append((name, Optional[spec], field(default=None)))
    schema = dataclasses.make_dataclass("AdvpriorConfig", fields, bases=(RootConfig,))
    schema.__module__ = __name__
    return schema


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore: ``schema/advprior`` (the root, extended by
    conf/config.yaml) and ``schema/<group>/<option>`` for the options of OneOf/EntriesOf groups."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="advprior", node=root_schema())
    for group, spec in GROUPS.items():
        if isinstance(spec, OneOf):
            for option, schema in spec.options.items():
                cs.store(group=f"schema/{group}", name=option, node=schema)
