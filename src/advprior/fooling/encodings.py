"""The two genetic encodings MAP-Elites searches with: CPPN genomes and the direct (pixel) encoding.

An encoding makes random genes, mutates parents into children, renders genes to images
``(B, C, H, W)`` in [0, 1] on its device, and owns its random generator (whose state checkpoints save).
Genes round-trip through ``gene_to_json`` / ``gene_from_json`` (the direct encoding's gene *is* its
image, so it stores nothing beside the image).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import cppn
from .config import CPPNConfig, DirectConfig
from .render import render_cppns


class CPPNEncoding:
    """CPPN genomes (``advprior.fooling.cppn``) rendered at ``shape = (C, H, W)``: one output per channel."""

    name = "cppn"

    def __init__(self, cfg: CPPNConfig, shape: tuple[int, int, int], device: torch.device | str,
                 seed: np.random.SeedSequence | int) -> None:
        self.cfg, self.shape, self.device = cfg, tuple(shape), torch.device(device)
        self.rng = np.random.default_rng(seed)

    def random(self, n: int) -> list[cppn.Genome]:
        return [cppn.random_genome(self.rng, self.shape[0], self.cfg.activations, self.cfg.weight_range,
                                   self.cfg.init_hidden) for _ in range(n)]

    def mutate(self, parents: Sequence[cppn.Genome], generation: int) -> list[cppn.Genome]:
        return [cppn.mutate(p, self.rng, self.cfg) for p in parents]

    def render(self, genes: Sequence[cppn.Genome]) -> torch.Tensor:
        return render_cppns(genes, self.shape[1], self.shape[2], self.device)

    def gene_to_json(self, gene: cppn.Genome) -> Any:
        return cppn.to_json(gene)

    def gene_from_json(self, obj: Any, image: torch.Tensor) -> cppn.Genome:
        return cppn.from_json(obj)

    def rng_state(self) -> dict:
        return {"numpy": json.dumps(self.rng.bit_generator.state)}

    def set_rng_state(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["numpy"])


def polynomial_mutation(x: torch.Tensor, u: torch.Tensor, eta: float) -> torch.Tensor:
    """Deb's polynomial mutation of values ``x`` in [0, 1] with uniform draws ``u`` in [0, 1):
    ``x + delta`` with ``delta = (2u)^(1/(eta+1)) - 1`` for ``u < 0.5``, else ``1 - (2(1-u))^(1/(eta+1))``,
    clamped to [0, 1]. Larger ``eta`` gives smaller steps."""
    p = 1.0 / (eta + 1.0)
    delta = torch.where(u < 0.5, (2 * u).pow(p) - 1, 1 - (2 * (1 - u)).pow(p))
    return (x + delta).clamp_(0.0, 1.0)


class DirectEncoding:
    """One gene per pixel (Nguyen et al.'s control): uniform random images; each child mutates each pixel
    with probability ``mutation_rate`` (halved every ``halve_every`` generations) by polynomial mutation."""

    name = "direct"

    def __init__(self, cfg: DirectConfig, shape: tuple[int, int, int], device: torch.device | str,
                 seed: np.random.SeedSequence | int) -> None:
        self.cfg, self.shape, self.device = cfg, tuple(shape), torch.device(device)
        seed = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        self.gen = torch.Generator(self.device).manual_seed(int(seed.generate_state(1, np.uint64)[0] >> np.uint64(1)))

    def rate(self, generation: int) -> float:
        halvings = 0 if self.cfg.halve_every is None else generation // self.cfg.halve_every
        return self.cfg.mutation_rate * 0.5 ** halvings

    def random(self, n: int) -> list[torch.Tensor]:
        return list(torch.rand((n, *self.shape), generator=self.gen, device=self.device).unbind(0))

    def mutate(self, parents: Sequence[torch.Tensor], generation: int) -> list[torch.Tensor]:
        x = torch.stack(list(parents))
        hit = torch.rand(x.shape, generator=self.gen, device=self.device) < self.rate(generation)
        u = torch.rand(x.shape, generator=self.gen, device=self.device)
        return list(torch.where(hit, polynomial_mutation(x, u, self.cfg.eta), x).unbind(0))

    def render(self, genes: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(genes))

    def gene_to_json(self, gene: torch.Tensor) -> Any:
        return None  # the image is the genome

    def gene_from_json(self, obj: Any, image: torch.Tensor) -> torch.Tensor:
        return image.to(self.device)

    def rng_state(self) -> dict:
        return {"torch": self.gen.get_state()}

    def set_rng_state(self, state: dict) -> None:
        self.gen.set_state(state["torch"])


def build_encoding(name: str, fcfg, shape: tuple[int, int, int], device: torch.device | str,
                   seed: np.random.SeedSequence | int):
    """``cppn`` or ``direct`` with its settings from a ``FoolingConfig``."""
    if name == "cppn":
        return CPPNEncoding(fcfg.cppn, shape, device, seed)
    if name == "direct":
        return DirectEncoding(fcfg.direct, shape, device, seed)
    raise ValueError(f"unknown encoding {name!r}; use 'cppn' or 'direct'")
