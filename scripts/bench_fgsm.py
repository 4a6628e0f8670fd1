"""Benchmark FGSM overhead and the FGSM eps sweep, side by side on one model and batch.

(1) ``FGSM(model, eps)(x, y)`` vs a bare forward + input-gradient backward (the floor for any FGSM);
    target overhead <= 5%.
(2) ``FGSMSweep(model, 8 epsilons).sweep(x, y)`` (1 forward+backward, then 8 scoring forwards) vs 8
    separate FGSM attack-and-evaluate passes (8 x (forward+backward + scoring forward)); target >= 3x.
    Counting passes, the speed-up is at most K(fb + f) / (fb + K f) with f a forward and fb a forward +
    input-gradient backward; the table prints that bound from the measured f and fb.

Each repeat times every variant once, in alternating order, and the table reports medians (the host
is shared and noisy). Example::

    python scripts/bench_fgsm.py                                  # small VGG-style net, 32x32, CPU
    python scripts/bench_fgsm.py --model vgg19 --device cuda      # torchvision VGG-19, 224x224, batch 8
    python scripts/bench_fgsm.py --quick --json out.json          # tiny settings; rows as JSON (make bench)
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from advprior.attacks import FGSM, FGSMSweep
from advprior.attacks.base import eval_mode, fgsm_step
from advprior.models.classifier import Classifier
from advprior.utils.bench import BenchRow, timed, write_results

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The 8 budgets of the sweep, on the paper's 0-255 scale (0.85 is the paper's headline eps).
EPS_255 = (0.25, 0.5, 0.85, 1.0, 2.0, 4.0, 8.0, 16.0)


def small_vgg(num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128, 256, 256)) -> Classifier:
    """VGG-19-style layout (2, 2, 4, 4, 4 convs per block, each block closed by a max-pool) for 32x32."""
    layers: list[nn.Module] = []
    c = 3
    for w, n in zip(widths, (2, 2, 4, 4, 4)):
        for _ in range(n):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True)]
            c = w
        layers.append(nn.MaxPool2d(2))
    net = nn.Sequential(
        *layers, nn.Flatten(),
        nn.Linear(c, 512), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Linear(512, num_classes),
    )
    return Classifier(net, mean=IMAGENET_MEAN, std=IMAGENET_STD, layers={}, num_classes=num_classes,
                      input_size=(3, 32, 32))


def build(name: str) -> tuple[Classifier, int, int]:
    """(model, image side, number of classes)."""
    if name == "vgg_small":
        return small_vgg(), 32, 10
    if name == "vgg19":
        net = tvm.vgg19(weights=None)
        return Classifier(net, IMAGENET_MEAN, IMAGENET_STD, layers={}, num_classes=1000,
                          input_size=(3, 224, 224)), 224, 1000
    raise ValueError(f"--model must be vgg_small or vgg19; got {name!r}")


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    return functools.partial(timed, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["vgg_small", "vgg19"], default="vgg_small")
    ap.add_argument("--batch-size", type=int, default=None, help="default 16 (vgg_small) / 8 (vgg19)")
    ap.add_argument("--repeats", type=int, default=7, help="repeats of the sweep comparison")
    ap.add_argument("--overhead-repeats", type=int, default=None,
                    help="repeats of the (cheaper) FGSM-overhead comparison; default 3 x --repeats")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (CPU); 1 is far less noisy on a loaded shared host")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the measured ratios here (advprior.utils.bench format)")
    ap.add_argument("--quick", action="store_true", help="2 repeats, batch 4: checks that the script runs")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.overhead_repeats, args.batch_size = 2, 2, args.batch_size or 4
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1; got {args.repeats}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    model, side, num_classes = build(args.model)
    model = model.to(device).eval()
    bs = args.batch_size or (16 if args.model == "vgg_small" else 8)
    x = torch.rand(bs, 3, side, side, device=device)
    y = torch.randint(0, num_classes, (bs,), device=device)
    epsilons = [e / 255 for e in EPS_255]
    eps = 0.85 / 255
    fgsm = FGSM(model, eps)
    sweep = FGSMSweep(model, epsilons)
    per_eps = [FGSM(model, e) for e in epsilons]

    def forward_only() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def bare() -> torch.Tensor:
        xr = x.detach().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(xr), y), xr)[0]

    grad = bare()

    def extras() -> torch.Tensor:
        # FGSM's work beyond the bare pass, alone: input checks, mode save/restore, label check, step.
        fgsm._check_inputs(x, y)
        with eval_mode(model):
            fgsm._check_label_range(y, num_classes)
        return fgsm_step(x, grad.sign(), eps)

    def separate() -> list[torch.Tensor]:
        out = []
        for attack in per_eps:
            adv = attack(x, y)
            with torch.no_grad():
                out.append(model(adv))
        return out

    def separate_with_clean() -> list[torch.Tensor]:
        # The same outputs as the sweep (clean AND adversarial logits per eps) from a per-eps loop with
        # a torchattacks-style attack, which does not return the clean logits of its own forward.
        out = []
        for attack in per_eps:
            with torch.no_grad():
                out.append(model(x))
            adv = attack(x, y)
            with torch.no_grad():
                out.append(model(adv))
        return out

    # Correctness check before timing: the sweep reproduces the per-eps attacks and their scores.
    res = sweep.sweep(x, y)
    for k, attack in enumerate(per_eps):
        assert torch.equal(res.adv_images(k), attack(x, y)), f"sweep differs from FGSM at eps index {k}"

    run = timer(device)
    # Two groups, each timed interleaved (alternating order per repeat) so load drift hits both sides.
    groups = {
        "overhead": {
            "forward only (no grad)": forward_only,
            "bare fwd+bwd (input grad)": bare,
            "FGSM attack": lambda: fgsm(x, y),
            "FGSM extras alone": extras,
        },
        "sweep": {
            "8 x (FGSM + eval)": separate,
            "8 x (clean eval + FGSM + eval)": separate_with_clean,
            "FGSMSweep K=8 (+ eval)": lambda: sweep.sweep(x, y),
        },
    }
    reps = {"overhead": args.overhead_repeats or 3 * args.repeats, "sweep": args.repeats}
    times: dict[str, list[float]] = {}
    for group, variants in groups.items():
        names = list(variants)
        for _ in range(args.warmup):
            for name in names:
                variants[name]()
        times.update({name: [] for name in names})
        for r in range(reps[group]):
            for name in names if r % 2 == 0 else reversed(names):
                times[name].append(run(variants[name]))
    med = {name: statistics.median(t) for name, t in times.items()}

    def paired(a: str, b: str) -> float:
        """Median over repeats of time(a) / time(b), measured back to back."""
        return statistics.median(ta / tb for ta, tb in zip(times[a], times[b]))

    cpus = os.cpu_count()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    load = " | load avg %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__} | python {platform.python_version()} | {platform.machine()}{load}")
    print(f"device {device} ({dev_name}) | os.cpu_count {cpus}, usable {affinity} | torch threads {torch.get_num_threads()}")
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params) | batch {bs}x3x{side}x{side}"
          f" | repeats {reps['overhead']} / {reps['sweep']} (medians) | epsilons (x255) {list(EPS_255)}")
    if hasattr(os, "getloadavg") and device.type == "cpu" and os.getloadavg()[0] > affinity:
        print(f"WARNING: load average {os.getloadavg()[0]:.1f} > {affinity} usable CPUs: other processes compete, "
              "timings are unreliable (--threads 1 suffers least)")
    print()
    w = max(len(n) for n in times)
    print(f"{'variant':<{w}}  {'median ms':>10}  {'min ms':>9}  {'max ms':>9}")
    for name, t in times.items():
        print(f"{name:<{w}}  {med[name] * 1e3:>10.2f}  {min(t) * 1e3:>9.2f}  {max(t) * 1e3:>9.2f}")
    print()
    f, fb = med["forward only (no grad)"], med["bare fwd+bwd (input grad)"]
    overhead = med["FGSM attack"] / fb - 1
    print(f"FGSM overhead vs bare fwd+bwd: {overhead * 100:+.1f}% of medians, "
          f"{(paired('FGSM attack', 'bare fwd+bwd (input grad)') - 1) * 100:+.1f}% median paired, "
          f"{(min(times['FGSM attack']) / min(times['bare fwd+bwd (input grad)']) - 1) * 100:+.1f}% of minima  "
          f"[target <= 5%]")
    print(f"  FGSM extras alone / bare fwd+bwd: {med['FGSM extras alone'] / fb * 100:.2f}% (noise-free estimate)")
    speedup = med["8 x (FGSM + eval)"] / med["FGSMSweep K=8 (+ eval)"]
    k = len(epsilons)
    # Op-count bound: K (fb + f) for separate passes vs fb + K f for the sweep.
    ideal = k * (fb + f) / (fb + k * f)
    print(f"sweep speed-up vs 8 separate FGSM+eval: {speedup:.2f}x of medians, "
          f"{paired('8 x (FGSM + eval)', 'FGSMSweep K=8 (+ eval)'):.2f}x median paired  [target >= 3x]")
    print(f"  op-count bound K(fb+f)/(fb+Kf) with fb/f = {fb / f:.2f}: {ideal:.2f}x "
          f"(>= 3x needs fb/f >= 3.2; input-grad-only backward skips the weight gradients)")
    speedup2 = med["8 x (clean eval + FGSM + eval)"] / med["FGSMSweep K=8 (+ eval)"]
    ideal2 = k * (fb + 2 * f) / (fb + k * f)
    print(f"sweep speed-up vs 8 separate (clean eval + FGSM + eval), the same outputs as the sweep: "
          f"{speedup2:.2f}x of medians, "
          f"{paired('8 x (clean eval + FGSM + eval)', 'FGSMSweep K=8 (+ eval)'):.2f}x median paired  [target >= 3x]")
    print(f"  op-count bound K(fb+2f)/(fb+Kf): {ideal2:.2f}x")
    if args.json:
        paired_overhead = (paired("FGSM attack", "bare fwd+bwd (input grad)") - 1) * 100
        paired_same = paired("8 x (clean eval + FGSM + eval)", "FGSMSweep K=8 (+ eval)")
        paired_sweep = paired("8 x (FGSM + eval)", "FGSMSweep K=8 (+ eval)")
        rows = [
            BenchRow("FGSM vs a bare forward+backward (median paired overhead)", paired_overhead, "%", "<= 5%",
                     paired_overhead <= 5, f"medians {med['FGSM attack'] * 1e3:.2f} vs {fb * 1e3:.2f} ms"),
            BenchRow("FGSM's own work alone (checks, modes, step) / bare pass", med["FGSM extras alone"] / fb * 100,
                     "%", detail=f"{med['FGSM extras alone'] * 1e3:.3f} ms"),
            BenchRow(f"FGSMSweep K={k} vs {k} x (clean eval + FGSM + eval), the same outputs (median paired)",
                     paired_same, "x", ">= 3x", paired_same >= 3, f"op-count bound {ideal2:.2f}x; medians {speedup2:.2f}x"),
            BenchRow(f"FGSMSweep K={k} vs {k} x (FGSM + eval), no clean logits (median paired)", paired_sweep, "x",
                     detail=f"op-count bound {ideal:.2f}x (fb/f = {fb / f:.2f}); medians {speedup:.2f}x"),
        ]
        write_results(args.json, "bench_fgsm", rows, settings={
            "model": args.model, "batch": bs, "side": side, "device": str(device), "threads": torch.get_num_threads(),
            "repeats": reps, "quick": args.quick})

if __name__ == "__main__":
    main()
