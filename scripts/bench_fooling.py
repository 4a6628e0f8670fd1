#!/usr/bin/env python
"""Benchmark fooling-image search: MAP-Elites evaluations per second beside a bare forward pass.

One MAP-Elites generation of B candidates (draw parents, mutate, render, score with one forward pass,
update the archive) vs a bare forward pass of the same model on B images: the ratio of their throughputs
is the share of the model's speed the search keeps (target >= 80%). The archive is first warmed up for
``--warm-generations`` so genomes have their grown size, and each repeat times both sides back to back in
alternating order (medians; the host is shared and noisy). Also printed: the median time of each part of
a generation (mutate, render, forward + softmax) to show where the rest goes.

    python scripts/bench_fooling.py                          # vgg_small (the embedded default's net), 1x32x32
    python scripts/bench_fooling.py --model alexnet --batch-size 32 --device cuda   # 3x224x224, random weights
    python scripts/bench_fooling.py --quick                  # seconds: correctness of the timed code paths
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics

import numpy as np
import torch

from advprior.fooling.config import FoolingConfig
from advprior.fooling.encodings import build_encoding
from advprior.fooling.map_elites import EliteArchive, class_probabilities, generation_step
from advprior.utils.bench import BenchRow, timed, write_results

TARGET = 0.8


def build_model(name: str) -> tuple[torch.nn.Module, tuple[int, int, int], int]:
    """(model in eval mode with random weights, input shape, classes)."""
    torch.manual_seed(0)
    if name == "vgg_small":  # conf/model/vgg_small.yaml on digits
        from advprior.models.vgg_small import build_vgg_small
        return build_vgg_small(10, widths=[16, 32, 32, 64, 64], hidden=256, dropout=0.3).freeze(), (1, 32, 32), 10
    if name == "shallow":
        from advprior.models.shallow import build_shallow
        return build_shallow(10).freeze(), (1, 32, 32), 10
    if name == "alexnet":
        from advprior.models.alexnet import build_torchvision_alexnet
        return build_torchvision_alexnet(weights=None).freeze(), (3, 224, 224), 1000
    raise ValueError(f"--model must be vgg_small, shallow or alexnet; got {name!r}")


def bench_encoding(name: str, model, shape, classes: int, batch: int, warm: int, repeats: int,
                   device: torch.device, fcfg: FoolingConfig) -> dict:
    """Median seconds of a generation of ``batch`` candidates, a bare forward and each part of a generation."""
    seeds = np.random.SeedSequence(0).spawn(2)
    encoding = build_encoding(name, fcfg, shape, device, seeds[1])
    rng = np.random.default_rng(seeds[0])
    score = class_probabilities(model)
    archive = EliteArchive.empty(classes, shape, device)
    for gen in range(warm):
        generation_step(archive, encoding, score, rng, gen, batch, batch)
    before = archive.fitness.clone()
    gen = max(warm, 1)
    x = encoding.render(encoding.mutate([archive.genes[k] for k in archive.filled()[:1]] * batch, gen))

    def step() -> None:
        nonlocal gen
        generation_step(archive, encoding, score, rng, gen, batch, batch)
        gen += 1

    def bare() -> None:
        with torch.inference_mode():
            model(x)

    parents = [archive.genes[k] for k in archive.filled()[rng.integers(len(archive.filled()), size=batch)]]
    children = encoding.mutate(parents, gen)
    parts = {"mutate": lambda: encoding.mutate(parents, gen), "render": lambda: encoding.render(children),
             "forward + softmax": lambda: score(x)}
    variants = {"generation": step, "bare forward": bare, **parts}
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(repeats):
        for k in names if r % 2 == 0 else reversed(names):
            times[k].append(timed(device, variants[k]))
    # correctness of what was timed: every generation scored `batch` candidates; no elite got worse
    assert archive.evaluations == batch * (warm + 1 + repeats), archive.evaluations
    assert bool((archive.fitness >= before).all()), "an elite was replaced by a worse one"
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and x.shape == (batch, *shape)
    med = {k: statistics.median(v) for k, v in times.items()}
    med["paired_ratio"] = statistics.median(b / g for b, g in zip(times["bare forward"], times["generation"]))
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["vgg_small", "shallow", "alexnet"], default="vgg_small")
    ap.add_argument("--encodings", nargs="+", choices=["cppn", "direct"], default=["cppn", "direct"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warm-generations", type=int, default=30, help="generations before timing (genomes grow)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the timed code paths run correctly")
    ap.add_argument("--json", default=None, help="write the results here (advprior.utils.bench format)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.batch_size, args.repeats, args.warm_generations = 8, 3, 2
    for name in ("batch_size", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, shape, classes = build_model(args.model)
    model = model.to(device)
    fcfg = FoolingConfig()
    load = " | load avg %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__} | python {platform.python_version()} | {platform.machine()}{load}")
    print(f"device {device} | torch threads {torch.get_num_threads()} | model {args.model} | batch {args.batch_size}x"
          f"{'x'.join(map(str, shape))} | {args.warm_generations} warm-up generations | {args.repeats} repeats (medians)")
    rows, b = [], args.batch_size
    for enc in args.encodings:
        med = bench_encoding(enc, model, shape, classes, b, args.warm_generations, args.repeats, device, fcfg)
        ratio = med["bare forward"] / med["generation"]
        print(f"\n{enc}: {b / med['generation']:.0f} evaluations/s in MAP-Elites vs {b / med['bare forward']:.0f} "
              f"images/s bare forward -> {ratio:.1%} of the bare pass (paired {med['paired_ratio']:.1%}; "
              f"target >= {TARGET:.0%})")
        for part in ("mutate", "render", "forward + softmax"):
            print(f"  {part:<18} {med[part] * 1e3:8.2f} ms")
        detail = (f"generation {med['generation'] * 1e3:.2f} ms, bare forward {med['bare forward'] * 1e3:.2f} ms, "
                  f"mutate {med['mutate'] * 1e3:.2f} ms, render {med['render'] * 1e3:.2f} ms, "
                  f"paired ratio {med['paired_ratio']:.3f}")
        rows.append(BenchRow(f"{enc} MAP-Elites evaluations vs bare forward ({args.model}, batch {b})", ratio, "x",
                             target=f">= {TARGET}", holds=ratio >= TARGET, detail=detail))
        rows.append(BenchRow(f"{enc} MAP-Elites evaluations per second ({args.model})", b / med["generation"], "img/s",
                             detail=detail))
    if args.json:
        write_results(args.json, "bench_fooling.py", rows, settings=vars(args))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
