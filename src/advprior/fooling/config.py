"""The ``fooling`` config group as dataclasses with value checks (conf/fooling/*.yaml has the same keys).

``FoolingConfig.from_node(cfg.fooling)`` turns the composed node into checked dataclasses; a bad value
raises ``ConfigError`` naming the key and what is allowed.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..validation import ConfigError
from .cppn import ACTIVATIONS

ENCODINGS = ("cppn", "direct")


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"fooling.{key} must be {allowed}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _probability(v: Any) -> bool:
    return _is_num(v) and 0.0 <= v <= 1.0


@dataclass
class CPPNConfig:
    """CPPN genomes (Nguyen et al. 2015): activations of hidden and output nodes, mutation rates."""

    activations: list[str] = field(default_factory=lambda: ["sine", "sigmoid", "gaussian", "identity", "tanh", "abs"])
    init_hidden: int = 1          # hidden nodes in a random genome (split edges of the full input->output net)
    max_hidden: int = 32          # add-node mutations stop at this many hidden nodes (bounds the render cost)
    weight_range: float = 8.0     # weights live in [-weight_range, weight_range]; inputs x, y are in [-1, 1]
    weight_sigma: float = 1.0     # std of the Gaussian weight perturbation
    weight_rate: float = 0.1      # each weight is perturbed with this probability
    activation_rate: float = 0.1  # each node's activation is redrawn with this probability
    add_node: float = 0.5         # per child: probability of splitting a connection with a new node
    remove_node: float = 0.2      # ... of removing a hidden node (its neighbours are reconnected)
    add_connection: float = 0.5   # ... of adding a connection that keeps the graph acyclic
    remove_connection: float = 0.3  # ... of removing a connection no node depends on alone

    def __post_init__(self) -> None:
        acts = list(self.activations)
        bad = [a for a in acts if a not in ACTIVATIONS]
        _check(bool(acts) and not bad and len(set(acts)) == len(acts), "cppn.activations", acts,
               f"a non-empty list of distinct names from {list(ACTIVATIONS)}")
        self.activations = acts
        _check(_is_int(self.init_hidden) and self.init_hidden >= 0, "cppn.init_hidden", self.init_hidden, "an int >= 0")
        _check(_is_int(self.max_hidden) and self.max_hidden >= self.init_hidden, "cppn.max_hidden", self.max_hidden,
               f"an int >= cppn.init_hidden ({self.init_hidden})")
        for key in ("weight_range", "weight_sigma"):
            v = getattr(self, key)
            _check(_is_num(v) and v > 0, f"cppn.{key}", v, "a positive number")
        for key in ("weight_rate", "activation_rate", "add_node", "remove_node", "add_connection", "remove_connection"):
            v = getattr(self, key)
            _check(_probability(v), f"cppn.{key}", v, "a probability in [0, 1]")


@dataclass
class DirectConfig:
    """The direct encoding (one gene per pixel, Nguyen et al.'s control): uniform init, polynomial mutation."""

    mutation_rate: float = 0.1     # share of pixels mutated per child
    halve_every: int | None = None  # halve the rate every this many generations (Nguyen et al.: 1000); null: never
    eta: float = 15.0              # polynomial mutation's distribution index (larger: smaller steps)

    def __post_init__(self) -> None:
        _check(_is_num(self.mutation_rate) and 0 < self.mutation_rate <= 1, "direct.mutation_rate",
               self.mutation_rate, "a number in (0, 1]")
        _check(self.halve_every is None or (_is_int(self.halve_every) and self.halve_every > 0),
               "direct.halve_every", self.halve_every, "a positive int or null")
        _check(_is_num(self.eta) and self.eta >= 0, "direct.eta", self.eta, "a number >= 0")


@dataclass
class FoolingConfig:
    """Which models evolve fooling images, which score them, and the MAP-Elites budget."""

    sources: list[str] | None = None   # models evolved on; null: every configured model
    targets: list[str] | None = None   # models scoring each source's elites; null: every configured model
    encodings: list[str] = field(default_factory=lambda: list(ENCODINGS))
    population: int = 64               # candidates per generation (generation 0: random genomes)
    generations: int = 60              # generations, the random one included: population x generations evaluations
    batch_size: int = 64               # candidates rendered and scored per forward pass
    checkpoint_every: int = 10         # generations between resumable checkpoints
    thresholds: list[float] = field(default_factory=lambda: [0.5, 0.99])  # summary: share of bins above each
    n_resamples: int = 2000            # BCa bootstrap resamples for the confidence means
    grid_samples: int = 10             # elites per figure (the highest source confidences)
    device: str | None = None          # null: where each model is; auto: cuda if available; or cpu, cuda:1...
    cppn: CPPNConfig = field(default_factory=CPPNConfig)
    direct: DirectConfig = field(default_factory=DirectConfig)

    def __post_init__(self) -> None:
        if isinstance(self.cppn, dict):
            self.cppn = CPPNConfig(**self.cppn)
        if isinstance(self.direct, dict):
            self.direct = DirectConfig(**self.direct)
        for key in ("sources", "targets"):
            v = getattr(self, key)
            if v is not None:
                v = list(v)
                _check(bool(v) and all(isinstance(s, str) for s in v) and len(set(v)) == len(v), key, v,
                       "null or a non-empty list of distinct model names")
                setattr(self, key, v)
        enc = list(self.encodings)
        _check(bool(enc) and set(enc) <= set(ENCODINGS) and len(set(enc)) == len(enc), "encodings", enc,
               f"a non-empty list of distinct names from {list(ENCODINGS)}")
        self.encodings = enc
        for key in ("population", "generations", "batch_size", "checkpoint_every", "n_resamples", "grid_samples"):
            v = getattr(self, key)
            _check(_is_int(v) and v > 0, key, v, "a positive int")
        if self.device is not None:
            try:
                torch.device(self.device if self.device != "auto" else "cpu")
            except (RuntimeError, TypeError) as e:
                raise ConfigError(f"fooling.device must be null, auto or a torch device such as cpu or cuda:0, "
                                  f"got {self.device!r}") from e
        th = list(self.thresholds)
        _check(all(_is_num(t) and 0 <= t < 1 for t in th), "thresholds", th, "a list of numbers in [0, 1)")
        self.thresholds = [float(t) for t in th]

    @classmethod
    def from_node(cls, node: Any) -> "FoolingConfig":
        """From a composed ``cfg.fooling`` (DictConfig or dict); unknown keys are an error."""
        from omegaconf import DictConfig, OmegaConf
        data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        try:
            return cls(**data)
        except TypeError as e:  # an unknown key: dataclass __init__ names it
            raise ConfigError(f"fooling: {e}; the keys are those of conf/fooling/default.yaml") from e

    def resolve_device(self, model: torch.nn.Module) -> torch.device:
        """Where to search and score: ``device``, with null meaning the model's own device."""
        if self.device is None:
            return next(model.parameters()).device
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def check_models(self, models: Iterable[str]) -> None:
        """Every named source and target is a configured model."""
        models = list(models)
        for key in ("sources", "targets"):
            missing = [m for m in (getattr(self, key) or []) if m not in models]
            if missing:
                raise ConfigError(f"fooling.{key} names {missing}, which are not among the configured models "
                                  f"{models}; add them to `model` or remove them from fooling.{key}")
