"""The ``activations`` config group (conf/activations/) as a dataclass with value checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..validation import ConfigError


@dataclass
class ActivationsConfig:
    """Settings of the ``activations`` stage. Epsilons are on the attack's scale (``attack.scale``, 255).

    Attributes:
        layers: layers of the Figure 7/8 heat maps (conv or pool layers of the target model); ``[]``
            draws no example figures.
        epsilons: the eps values of the layer-wise change, a subset of ``attack.epsilons``; None = all.
        change_layers: layers of the relative change (each model records those it has); None = every named
            layer of each model.
        figure_eps: the eps of the Figure 7/8 examples (one of the epsilons); None = ``attack.figure_eps``.
        examples_per_category: high-confidence examples drawn per category (0 = none).
    """

    layers: list[str] = field(default_factory=lambda: ["conv1_2", "conv3_1", "conv5_1"])
    epsilons: Optional[list[float]] = None  # noqa: UP007 - OmegaConf structured configs need Optional
    change_layers: Optional[list[str]] = None  # noqa: UP007
    figure_eps: Optional[float] = None  # noqa: UP007
    examples_per_category: int = 1

    def __post_init__(self) -> None:
        def names(key: str, value: Any, allow_empty: bool) -> None:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"activations.{key} must be a list of layer names, got {value!r}")
            if not allow_empty and not value:
                raise ConfigError(f"activations.{key} must not be empty; use null for every named layer")
            if len(set(value)) != len(value):
                raise ConfigError(f"activations.{key} lists a layer twice: {list(value)}")

        names("layers", self.layers, allow_empty=True)
        if self.change_layers is not None:
            names("change_layers", self.change_layers, allow_empty=False)
        if self.epsilons is not None:
            if not isinstance(self.epsilons, (list, tuple)) or not self.epsilons or not all(
                    _number(e) and e >= 0 for e in self.epsilons):
                raise ConfigError(f"activations.epsilons must be null or a non-empty list of numbers >= 0 "
                                  f"(a subset of attack.epsilons), got {self.epsilons!r}")
        if self.figure_eps is not None and not (_number(self.figure_eps) and self.figure_eps >= 0):
            raise ConfigError(f"activations.figure_eps must be null or a number >= 0, got {self.figure_eps!r}")
        n = self.examples_per_category
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"activations.examples_per_category must be an integer >= 0, got {n!r}")

    @classmethod
    def from_cfg(cls, node: Any) -> "ActivationsConfig":
        """From the composed ``cfg.activations`` (a DictConfig or a plain dict); unknown keys are refused."""
        from omegaconf import DictConfig, OmegaConf

        data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown key(s) activations.{unknown}; allowed: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
