"""MAP-Elites with one bin per class (Mouret & Clune 2015, as Nguyen et al. 2015 used it for fooling images).

Each bin keeps the image (and its gene) with the highest probability of that bin's class found so far.
Generation 0 scores ``population`` random genes; every later generation mutates ``population`` parents
drawn uniformly from the filled bins. Each candidate competes for every bin: per batch of renders (one
forward pass), a bin takes the batch's best candidate for its class only if that candidate is strictly
better than its elite, so an elite's probability never decreases.

``map_elites`` is a plain function (no data parallelism: under DDP call it on rank 0 only). With a
``checkpoint`` path it saves the archive and every random generator's state atomically every
``checkpoint_every`` generations and resumes from that file, so an interrupted search ends with exactly
the archive an uninterrupted one gives.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..attacks.base import eval_mode
from ..utils.io import load_torch, save_torch

log = logging.getLogger(__name__)


@dataclass
class EliteArchive:
    """One elite per class bin. ``fitness[k]``: the elite's probability of class k on the searched model
    (-inf while bin k is empty); ``top1``/``top1_prob``: that model's top label and its probability for
    the elite; ``images``: ``(K, C, H, W)`` in [0, 1]; ``genes[k]``: the elite's gene (None when empty)."""

    fitness: torch.Tensor
    top1: torch.Tensor
    top1_prob: torch.Tensor
    images: torch.Tensor
    genes: list[Any]
    evaluations: int = 0
    history: list[dict] = field(default_factory=list)

    @classmethod
    def empty(cls, num_bins: int, shape: Sequence[int], device: torch.device | str = "cpu") -> "EliteArchive":
        return cls(fitness=torch.full((num_bins,), -float("inf")), top1=torch.full((num_bins,), -1, dtype=torch.long),
                   top1_prob=torch.zeros(num_bins), images=torch.zeros((num_bins, *shape), device=device),
                   genes=[None] * num_bins)

    @property
    def num_bins(self) -> int:
        return len(self.genes)

    def filled(self) -> np.ndarray:
        """Indices of the bins holding an elite."""
        return np.flatnonzero(np.isfinite(self.fitness.numpy()))

    def update(self, images: torch.Tensor, genes: Sequence[Any], probs: torch.Tensor) -> int:
        """Offer candidates ``images`` (B, C, H, W) with class probabilities ``probs`` (B, K) to every bin;
        returns how many bins took a new elite. NaN probabilities never win."""
        probs = torch.nan_to_num(probs.detach().float().cpu(), nan=-1.0)
        if probs.shape != (len(genes), self.num_bins):
            raise ValueError(f"probs must be (candidates, bins) = ({len(genes)}, {self.num_bins}), got {tuple(probs.shape)}")
        best, idx = probs.max(0)  # ties: the first candidate
        bins = torch.nonzero(best > self.fitness).flatten()
        if len(bins) == 0:
            return 0
        src = idx[bins]
        self.fitness[bins] = best[bins]
        self.top1_prob[bins], self.top1[bins] = probs[src].max(1)
        self.images[bins.to(self.images.device)] = images[src.to(images.device)].to(self.images)
        for b, s in zip(bins.tolist(), src.tolist()):
            self.genes[b] = genes[s]
        return len(bins)


def _record(archive: EliteArchive, generation: int, replaced: int) -> dict:
    f = archive.fitness[torch.isfinite(archive.fitness)]
    return {"generation": generation, "evaluations": archive.evaluations, "filled": int(len(f)),
            "replaced": replaced, "fitness_mean": float(f.mean()) if len(f) else float("nan"),
            "fitness_min": float(f.min()) if len(f) else float("nan"),
            "fitness_max": float(f.max()) if len(f) else float("nan")}


def save_checkpoint(path: Path, archive: EliteArchive, next_generation: int, rng: np.random.Generator,
                    encoding, meta: dict) -> None:
    """Archive, generation counter and every random state in one file, written atomically."""
    save_torch({
        "next_generation": next_generation, "evaluations": archive.evaluations, "fitness": archive.fitness,
        "top1": archive.top1, "top1_prob": archive.top1_prob, "images": archive.images.cpu(),
        "genes": json.dumps([None if g is None else encoding.gene_to_json(g) for g in archive.genes]),
        "history": json.dumps(archive.history), "rng": json.dumps(rng.bit_generator.state),
        "encoding_rng": encoding.rng_state(), "meta": json.dumps(meta, sort_keys=True),
    }, path)


def load_checkpoint(path: Path, rng: np.random.Generator, encoding, meta: dict,
                    device: torch.device | str) -> tuple[EliteArchive, int]:
    """The archive and next generation of a checkpoint; restores ``rng`` and the encoding's generator."""
    ck = load_torch(path)
    saved = json.loads(ck["meta"])
    if saved != meta:
        raise ValueError(f"checkpoint {path} was made by another search ({saved}), not this one ({meta}); "
                         "delete it to start afresh")
    images = ck["images"].to(device)
    genes = [encoding.gene_from_json(obj, images[k]) if np.isfinite(float(f)) else None
             for k, (obj, f) in enumerate(zip(json.loads(ck["genes"]), ck["fitness"]))]
    archive = EliteArchive(ck["fitness"], ck["top1"], ck["top1_prob"], images, genes, int(ck["evaluations"]),
                           json.loads(ck["history"]))
    rng.bit_generator.state = json.loads(ck["rng"])
    encoding.set_rng_state(ck["encoding_rng"])
    return archive, int(ck["next_generation"])


def map_elites(
    score: Callable[[torch.Tensor], torch.Tensor],
    encoding,
    num_bins: int,
    population: int,
    generations: int,
    batch_size: int,
    rng: np.random.Generator,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
    label: str = "map_elites",
) -> EliteArchive:
    """Search ``generations`` generations of ``population`` candidates each.

    Args:
        score: images ``(B, C, H, W)`` in [0, 1] -> class probabilities ``(B, num_bins)`` (one forward pass).
        encoding: a ``CPPNEncoding`` or ``DirectEncoding`` (its own generator makes and mutates genes).
        rng: draws the parents (its state is checkpointed with the encoding's).
        checkpoint: a file to resume from and save to every ``checkpoint_every`` generations.
    Returns the archive (``history``: one dict per generation with evaluations and elite fitness stats).
    """
    for name, v in (("population", population), ("generations", generations), ("batch_size", batch_size),
                    ("checkpoint_every", checkpoint_every), ("num_bins", num_bins)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    device = encoding.device
    meta = {"encoding": encoding.name, "num_bins": num_bins, "population": population, "batch_size": batch_size,
            "shape": list(encoding.shape)}
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        archive, start = load_checkpoint(path, rng, encoding, meta, device)
        log.info("%s: resuming at generation %d from %s", label, start, path)
    else:
        archive, start = EliteArchive.empty(num_bins, encoding.shape, device), 0
    every = max(1, generations // 10)
    for gen in range(start, generations):
        replaced = generation_step(archive, encoding, score, rng, gen, population, batch_size)
        archive.history.append(_record(archive, gen, replaced))
        if (gen + 1) % every == 0 or gen + 1 == generations:
            h = archive.history[-1]
            log.info("%s: generation %d/%d, %d evaluations, %d bins filled, elite probability mean %.3f min %.3f",
                     label, gen + 1, generations, h["evaluations"], h["filled"], h["fitness_mean"], h["fitness_min"])
        if path is not None and ((gen + 1) % checkpoint_every == 0 and gen + 1 < generations):
            save_checkpoint(path, archive, gen + 1, rng, encoding, meta)
    return archive


def generation_step(archive: EliteArchive, encoding, score: Callable[[torch.Tensor], torch.Tensor],
                    rng: np.random.Generator, generation: int, population: int, batch_size: int) -> int:
    """One generation: ``population`` random genes (generation 0, or an empty archive) or children of
    parents drawn uniformly from the filled bins, rendered and scored ``batch_size`` at a time, each batch
    offered to the archive. Returns how many bins took a new elite."""
    filled = archive.filled()
    if generation == 0 or len(filled) == 0:
        genes = encoding.random(population)
    else:
        parents = filled[rng.integers(len(filled), size=population)]
        genes = encoding.mutate([archive.genes[k] for k in parents], generation)
    replaced = 0
    for lo in range(0, population, batch_size):
        chunk = genes[lo:lo + batch_size]
        images = encoding.render(chunk)
        replaced += archive.update(images, chunk, score(images))
        archive.evaluations += len(chunk)
    return replaced


def class_probabilities(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``score`` for ``map_elites``: softmax of ``model``'s logits (eval mode, no autograd)."""
    def score(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), eval_mode(model):
            return torch.softmax(model(images), dim=1)
    return score
