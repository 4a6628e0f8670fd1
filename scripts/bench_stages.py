#!/usr/bin/env python
"""Throughput of the image stages (attack, features, defense) beside their compute floor, and the projected
time of the paper's full run on this machine.

Each stage runs as the pipeline runs it (``advprior.loops.run_loop``: a Lightning test loop with its real
per-batch step, pieces written and merged) over N random [0,1] images with a torchvision VGG-19 (random
weights, 224x224). Its floor is the bare VGG-19 passes the stage needs, timed in the same run on the same
batches: the stage's forward passes are counted while it runs (a hook on the model: those with autograd on
are forward+backward, the others forward only), then exactly that many bare passes are timed, no-grad
forwards and forward+input-gradient backwards. Ratio = stage time / floor time (target <= 1.25x). The
defense's prior (PCA, autoencoders, KDE over ``--classes`` classes) is work beyond the floor, so it counts
against the ratio. Times are medians over ``--repeats``.

Projection: the paper's full run, VGG-19 on the 50,000 validation images at the paper's eps list
(attack and defense) and 300 support images x 1000 classes (features), at the measured stage throughput.

    python scripts/bench_stages.py                        # VGG-19 224x224, 1000 classes, on the GPU if any
    python scripts/bench_stages.py --quick                # tiny (32x32, 10 classes): checks the script runs
    python scripts/bench_stages.py --precision bf16-mixed --channels-last --json results.json
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from advprior.attacks.lit_sweep import TABLES as ATTACK_TABLES
from advprior.config.stages import DefenseConfig
from advprior.attacks.lit_sweep import AttackStep
from advprior.data.digits import TensorImageDataset
from advprior.loops import RangeBatchSampler, run_loop, stage_models
from advprior.models.vgg import build_torchvision_vgg
from advprior.prior import BayesianPriorClassifier, fit_class_prior
from advprior.prior.features import TABLES as FEATURE_TABLES
from advprior.prior.features import FeatureStep
from advprior.stages.defense import DEFENSE_TABLES, DefenseStep
from advprior.utils.bench import BenchRow, write_results
from advprior.utils.machine import machine_line

DEFAULT_PGD_STEPS = DefenseConfig().adaptive.pgd.steps

log = logging.getLogger("bench_stages")

PAPER_EPS = [0.85, 2, 4, 8]  # conf/experiment/paper_imagenet.yaml, 0-255 scale
PAPER_COUNTS = {"attack": 50_000, "features": 300 * 1000, "defense": 50_000}
TARGET = 1.25


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PassCounter:
    """Counts the model's forward calls per batch, split by whether autograd was on (forward+backward)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.grad = self.nograd = 0
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:  # noqa: ANN001
        if torch.is_grad_enabled():
            self.grad += 1
        else:
            self.nograd += 1

    def remove(self) -> None:
        self._handle.remove()


def synthetic_prior(classes: int, dim: int, components: int, bottleneck: int, device: torch.device, seed: int = 0):
    """A prior of the paper's shape fitted on random ReLU'd features (components + 1 points per class)."""
    g = torch.Generator().manual_seed(seed)
    n = components + 1
    feats = torch.randn(classes * n, dim, generator=g).relu_()
    labels = torch.arange(classes).repeat_interleave(n)
    return fit_class_prior(feats.to(device), labels.to(device), classes, n_components=components,
                           bottleneck=bottleneck, epochs=1, batch_size=n, seed=seed, engine="torch").cpu()


def time_stage(run: Callable[[Path], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            run(Path(d))
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_floor(model: torch.nn.Module, batches: list[torch.Tensor], n_fb: float, n_f: float, repeats: int,
               device: torch.device, channels_last: bool) -> float:
    """Median time of ``n_fb`` forward+input-gradient passes and ``n_f`` no-grad forwards per batch."""
    k_fb, k_f = round(n_fb), round(n_f)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for xb in batches:
            x = xb.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for _ in range(k_fb):
                xg = x.detach().requires_grad_(True)
                torch.autograd.grad(model(xg).sum(), xg)
            with torch.no_grad():
                for _ in range(k_f):
                    model(x)
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny: 32x32 images, 10 classes, 2 images, 1 PGD step, 1 repeat")
    ap.add_argument("--device", default="auto", help="auto (GPU if any), cpu or cuda")
    ap.add_argument("--images", type=int, default=None, help="images per stage run (default 512 GPU, 8 CPU)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 64 GPU, 4 CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--pgd-steps", type=int, default=DEFAULT_PGD_STEPS,
                    help=f"defense.adaptive.pgd.steps (default: the config's, {DEFAULT_PGD_STEPS})")
    ap.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 4 on a GPU, else 0)")
    ap.add_argument("--stages", default="attack,features,defense")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (advprior.utils.bench)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)

    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    device = torch.device("cuda" if cuda else "cpu")
    size, classes = (32, 10) if args.quick else (224, args.classes)
    n = args.images or (2 if args.quick else 512 if cuda else 8)
    batch = args.batch or (2 if args.quick else 64 if cuda else 4)
    repeats = args.repeats or (1 if args.quick else 3)
    steps = 1 if args.quick else args.pgd_steps
    workers = args.workers if args.workers is not None else (4 if cuda and not args.quick else 0)
    eps = [e / 255 for e in PAPER_EPS]

    torch.manual_seed(0)
    vgg = build_torchvision_vgg("vgg19", weights=None, num_classes=classes).freeze()
    models = stage_models({"vgg19": vgg}, args.precision)
    base = models["vgg19"]
    images = torch.rand(n, 3, size, size)
    dataset = TensorImageDataset(images, torch.randint(0, classes, (n,)))
    batches = [images[b] for b in RangeBatchSampler([(0, n)], batch).batches()]

    def make_trainer(**overrides):
        kwargs = dict(accelerator="gpu" if cuda else "cpu", devices=1, precision=args.precision,
                      enable_model_summary=False, enable_checkpointing=False)
        return pl.Trainer(**{**kwargs, **overrides, "enable_progress_bar": False, "callbacks": []})

    def loop(step, mods, tables, grad: bool, data=dataset) -> Callable[[Path], None]:
        return lambda out: run_loop(data, step, mods, tables, out, make_trainer=make_trainer, shard_size=max(n, 1),
                                    batch_size=batch, num_workers=workers, input_shape=(3, size, size),
                                    grad=grad, channels_last=args.channels_last, pin_memory=cuda)

    stages: dict[str, Callable[[TensorImageDataset], Callable[[Path], None]]] = {}
    stages["attack"] = lambda data: loop(AttackStep({"vgg19": base}, eps), {"vgg19": base}, ATTACK_TABLES, True, data)
    stages["features"] = lambda data: loop(FeatureStep(base, "fc6"), {"vgg19": base}, FEATURE_TABLES, False, data)
    if "defense" in args.stages:
        t0 = time.perf_counter()
        prior = synthetic_prior(classes, 4096, 128 if not args.quick else 8, 8 if not args.quick else 2, device)
        log.info("synthetic prior for %d classes fitted in %.1f s", classes, time.perf_counter() - t0)
        defended = BayesianPriorClassifier(base, prior, feature_layer="fc6").eval()
        dcfg = OmegaConf.structured(DefenseConfig)  # the defense's defaults (adaptive attacks included)
        dcfg.adaptive.pgd.steps = steps
        stages["defense"] = lambda data: loop(DefenseStep(base, defended, eps, dcfg, True, 0), {"defended": defended},
                                              DEFENSE_TABLES, True, data)

    log.info("machine: %s", machine_line())
    log.info("VGG-19 %dx%d, %d classes, %d images in batches of %d, %s%s, %d repeats, device %s", size, size,
             classes, n, batch, args.precision, ", channels_last" if args.channels_last else "", repeats, device)
    rows: list[BenchRow] = []
    projected_total = floor_total = 0.0
    for name in [s for s in args.stages.split(",") if s]:
        first = TensorImageDataset(images[:batch], dataset.labels[:batch])
        counter = PassCounter(vgg.net)  # the network proper: Classifier.forward_with_features calls it too
        with tempfile.TemporaryDirectory() as d:  # warm-up on one batch, counting the model's passes
            stages[name](first)(Path(d))
        counter.remove()
        n_fb, n_f = counter.grad, counter.nograd  # per batch (the warm-up ran one batch)
        stage_s = time_stage(stages[name](dataset), repeats)
        floor_s = time_floor(vgg if args.precision == "32-true" else base, batches, n_fb, n_f, repeats, device,
                             args.channels_last)
        ratio = stage_s / floor_s
        ips, fips = n / stage_s, n / floor_s
        hours = PAPER_COUNTS[name] / ips / 3600
        projected_total += hours
        floor_total += PAPER_COUNTS[name] / fips / 3600
        log.info("%-8s %8.2f img/s  floor %8.2f img/s  ratio %.2fx  (%d fwd+bwd, %d fwd per image)  paper run %.1f h",
                 name, ips, fips, ratio, n_fb, n_f, hours)
        setting = f"{n} images, batch {batch}, {size}x{size}, {args.precision}, {workers} workers, {device}"
        rows += [
            BenchRow(f"{name}: stage vs its bare VGG-19 passes", ratio, "x", f"<= {TARGET}x", ratio <= TARGET,
                     f"{stage_s:.3f} s vs {floor_s:.3f} s; {n_fb} fwd+bwd + {n_f} fwd per image; {setting}"),
            BenchRow(f"{name}: throughput", ips, "img/s", None, None, f"floor {fips:.2f} img/s; {setting}"),
            BenchRow(f"{name}: projected paper run ({PAPER_COUNTS[name]:,} images)", hours, "h", None, None,
                     "at the measured throughput" + (" (quick mode: not the paper's setting)" if args.quick else "")),
        ]
    rows.append(BenchRow("paper run, projected total", projected_total, "h", None, None,
                         f"floor {floor_total:.2f} h; one {device} device; N GPUs under DDP divide it by about N"))
    log.info("paper run on this machine: %.1f h projected (%.1f h at the floor)", projected_total, floor_total)
    if args.json:
        write_results(args.json, "bench_stages.py", rows, settings={
            "quick": args.quick, "images": n, "batch": batch, "size": size, "classes": classes, "repeats": repeats,
            "pgd_steps": steps, "workers": workers, "precision": args.precision, "channels_last": args.channels_last,
            "device": str(device), "eps_255": PAPER_EPS})
        log.info("results: %s", args.json)


if __name__ == "__main__":
    main()
