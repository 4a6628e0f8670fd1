"""Schema of the ``fooling`` group (CPPN and direct-encoding fooling images searched with MAP-Elites)."""
import re
from dataclasses import dataclass, field
from typing import List, Optional

from . import rules

ENCODINGS = ("cppn", "direct")
CPPN_ACTIVATIONS = ("sine", "sigmoid", "gaussian", "identity", "tanh", "abs", "cos")
"""The activation names a CPPN node can take (``advprior.fooling.cppn.ACTIVATIONS`` has their functions)."""
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _distinct_names(obj: object, name: str, allowed: tuple[str, ...] | None, null: bool, example: object) -> None:
    v = getattr(obj, name)
    if null and v is None:
        return
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(s, str) and s for s in v) \
        and len(set(v)) == len(v) and (allowed is None or set(v) <= set(allowed))
    if not ok:
        what = f"names from {', '.join(allowed)}" if allowed else "model names"
        rules.fail(obj, name, f"must be a non-empty list of distinct {what}" + (" or null" if null else ""), example)


def _probability(obj: object, *names: str) -> None:
    for n in names:
        rules.number_in(obj, n, 0, 1)


@dataclass
class CPPNConfig:
    """CPPN genomes (Nguyen et al. 2015): activations of hidden and output nodes, mutation rates."""

    activations: List[str] = field(default_factory=lambda: ["sine", "sigmoid", "gaussian", "identity", "tanh", "abs"])
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
        _distinct_names(self, "activations", CPPN_ACTIVATIONS, False, ["sine", "sigmoid", "gaussian"])
        self.activations = list(self.activations)
        rules.int_at_least(self, "init_hidden", 0)
        if not (rules.is_int(self.max_hidden) and self.max_hidden >= self.init_hidden):
            rules.fail(self, "max_hidden", f"must be an integer >= {{init_hidden}}={self.init_hidden}")
        rules.number_in(self, "weight_range", 0, low_open=True)
        rules.number_in(self, "weight_sigma", 0, low_open=True)
        _probability(self, "weight_rate", "activation_rate", "add_node", "remove_node", "add_connection",
                     "remove_connection")


@dataclass
class DirectConfig:
    """The direct encoding (one gene per pixel, Nguyen et al.'s control): uniform init, polynomial mutation."""

    mutation_rate: float = 0.1             # share of pixels mutated per child
    halve_every: Optional[int] = None      # halve the rate every this many generations (Nguyen et al.: 1000)
    eta: float = 15.0                      # polynomial mutation's distribution index (larger: smaller steps)

    def __post_init__(self) -> None:
        rules.number_in(self, "mutation_rate", 0, 1, low_open=True)
        rules.positive_int(self, "halve_every", null="never")
        rules.number_in(self, "eta", 0)


@dataclass
class FoolingConfig:
    """Which models evolve fooling images, which score them, and the MAP-Elites budget."""

    sources: Optional[List[str]] = None    # models evolved on; null: every configured model
    targets: Optional[List[str]] = None    # models scoring each source's elites; null: every configured model
    encodings: List[str] = field(default_factory=lambda: list(ENCODINGS))
    population: int = 64                   # candidates per generation (generation 0: random genomes)
    generations: int = 60                  # generations, the random one included
    batch_size: int = 64                   # candidates rendered and scored per forward pass
    checkpoint_every: int = 10             # generations between resumable checkpoints
    thresholds: List[float] = field(default_factory=lambda: [0.5, 0.99])  # summary: share of bins above each
    n_resamples: int = 2000                # BCa bootstrap resamples for the confidence means
    grid_samples: int = 10                 # elites per figure (the highest source confidences)
    device: Optional[str] = None           # null: where each model is; auto: cuda if available; or cpu, cuda:1
    cppn: CPPNConfig = field(default_factory=CPPNConfig)
    direct: DirectConfig = field(default_factory=DirectConfig)

    def __post_init__(self) -> None:
        for key in ("sources", "targets"):
            _distinct_names(self, key, None, True, None)
            if getattr(self, key) is not None:
                setattr(self, key, list(getattr(self, key)))
        _distinct_names(self, "encodings", ENCODINGS, False, list(ENCODINGS))
        self.encodings = list(self.encodings)
        for key in ("population", "generations", "batch_size", "checkpoint_every", "n_resamples", "grid_samples"):
            rules.positive_int(self, key)
        if self.device is not None and not (isinstance(self.device, str) and _DEVICE.match(self.device)):
            rules.fail(self, "device", "must be null (each model's own device), auto (cuda when available) or a "
                       "torch device such as cpu, cuda or cuda:1", example="auto")
        th = self.thresholds
        if not (isinstance(th, (list, tuple)) and all(rules.is_number(t) and 0 <= t < 1 for t in th)):
            rules.fail(self, "thresholds", "must be a list of numbers in [0, 1)")
        self.thresholds = [float(t) for t in th]
