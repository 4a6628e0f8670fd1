#!/usr/bin/env python
"""Benchmark the batched Bayesian-prior pieces against per-class loops, side by side in one run.

(1) ClassPCA.fit (batched Gram eigendecompositions) vs a scikit-learn PCA(svd_solver="full") loop;
(2) batched autoencoder training vs a loop of per-class nn.Sequential + Adam (same steps);
(3) ClassConditionalKDE scoring vs a scikit-learn KernelDensity loop (exact: leaf_size > n);
(4) the exact C-class prior per image (PCA into C subspaces + C encoders + C KDEs) vs a torchvision VGG-19
    (weights=None) forward pass at 224x224, as a fraction.
Loops that would take too long are timed on a subset of classes and extrapolated linearly (marked "extrap").
Random ImageNet-shaped data: ReLU'd Gaussian fc6 features. Times are medians over --repeats.

    python scripts/bench_prior.py                      # 1000 classes, D=4096, d=128, k=8, 300 per class
    python scripts/bench_prior.py --classes 100        # quicker
    python scripts/bench_prior.py --quick --json out.json   # tiny settings, no VGG-19; rows as JSON (make bench)
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import torch
from torch import nn

from advprior.prior import BatchedAutoencoder, ClassConditionalKDE, ClassPCA, ClassPrior
from advprior.prior.autoencoder import fit_autoencoder
from advprior.utils.bench import BenchRow, write_results


def timeit(fn, repeats: int, warmup: int = 0) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def best_over_threads(fn, repeats: int, thread_counts: list[int], warmup: int = 0) -> tuple[float, int]:
    """Median time of ``fn`` under each intra-op thread count; returns the fastest (time, threads).

    Shared, busy cores make multi-threaded small kernels erratic, so every contender gets its best setting.
    """
    best = (float("inf"), 0)
    for th in thread_counts:
        with Threads(th):
            best = min(best, (timeit(fn, repeats, warmup), th))
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Threads:
    """Temporarily set torch's intra-op threads and numpy's BLAS/OpenMP thread pools."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        from threadpoolctl import threadpool_limits  # numpy/scipy BLAS and OpenMP pools (sklearn's side)

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)
        self.pools = threadpool_limits(limits=self.n)

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.pools.restore_original_limits()
        torch.set_num_threads(self.old)


def bench_rows(rows: list[tuple[str, str, float, str, float, str]]) -> list[BenchRow]:
    """The printed comparisons as ``BenchRow``s: reference time / ours as a ratio (x), except the prior's cost
    per image, a percentage of VGG-19's (target <= 10% for the forward pass). Rows without a measured reference
    (``--skip-vgg``) are left out."""
    out, task, ours = [], "", ""
    for t, a, ta, b, tb, note in rows:
        task, a = t or task, a or ours  # an empty cell continues the row above
        ours = a
        if not (tb == tb and ta > 0):  # NaN reference: not measured
            continue
        name = f"{task}: {a} vs {b}"
        detail = f"{ta:.4g} s vs {tb:.4g} s" + (f"; {note}" if note else "")
        if "prior / image" in task:
            frac = 100 * ta / tb
            fwd_only = "fwd+bwd" not in a
            out.append(BenchRow(name, frac, "%", "<= 10%" if fwd_only else None, frac <= 10 if fwd_only else None,
                                detail))
        elif task.startswith("AE train") and "Lightning" in a:
            out.append(BenchRow(name, tb / ta, "x", ">= 3x", tb / ta >= 3, detail))
        else:
            out.append(BenchRow(name, tb / ta, "x", detail=detail))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=4096, help="fc6 feature dimension D")
    ap.add_argument("--components", type=int, default=128, help="PCA dimension d")
    ap.add_argument("--bottleneck", type=int, default=8, help="code dimension k")
    ap.add_argument("--support", type=int, default=300, help="support points per class")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--loop-classes", type=int, default=16,
                    help="classes the per-class reference loops run on before extrapolating (<= --classes)")
    ap.add_argument("--ae-epochs", type=int, default=1)
    ap.add_argument("--ae-batch", type=int, default=32)
    ap.add_argument("--kde-queries", type=int, default=64, help="queries scored per class in (3)")
    ap.add_argument("--image-batch", default="8,32",
                    help="comma-separated images per prior forward in (4); VGG-19 is timed at the first (its "
                         "per-image cost is flat in the batch size)")
    ap.add_argument("--threads", default=None,
                    help="comma-separated intra-op thread counts to try per contender (default: 1,<torch default>)")
    ap.add_argument("--skip-vgg", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the measured ratios here (advprior.utils.bench format)")
    ap.add_argument("--quick", action="store_true",
                    help="20 classes, D=256, d=16, k=4, 40 per class, 1 repeat, no VGG-19: checks that the script runs")
    args = ap.parse_args()
    if args.quick:
        args.classes, args.dim, args.components, args.bottleneck, args.support = 20, 256, 16, 4, 40
        args.repeats, args.loop_classes, args.skip_vgg, args.kde_queries = 1, 4, True, 16
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KernelDensity

    dev = torch.device(args.device)
    C, D, d, k, n = args.classes, args.dim, args.components, args.bottleneck, args.support
    L = min(args.loop_classes, C)
    R = args.repeats
    threads = torch.get_num_threads()
    ths = sorted({int(t) for t in args.threads.split(",")}) if args.threads else sorted({1, threads})
    rows: list[tuple[str, str, float, str, float, str]] = []
    print(f"# bench_prior: C={C} D={D} d={d} k={k} n={n}/class, device={dev}, thread counts tried={ths} "
          f"(each contender reported at its fastest, [Nt]), repeats={R}, loop subset={L} classes")

    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    feats = torch.empty(C * n, D)
    for s in range(0, C * n, 65536):  # fill in place: no second 4.9 GB copy
        e = min(C * n, s + 65536)
        feats[s:e] = torch.randn(e - s, D, generator=g).relu_()
    labels = torch.arange(C).repeat_interleave(n)
    feats = feats.to(dev)
    labels = labels.to(dev)
    print(f"# data: {feats.numel() * 4 / 2**30:.2f} GiB features generated in {time.perf_counter() - t0:.1f} s")

    # ---------------------------------------------------------------- (1) PCA
    pca = ClassPCA(d)
    scores_holder = {}

    def ours_pca() -> None:
        scores_holder["s"] = pca.fit_transform(feats, labels, C)
        sync(dev)

    t_ours = timeit(ours_pca, R)
    sub = feats[: L * n].cpu().numpy()

    def sk_pca() -> None:
        for c in range(L):
            PCA(n_components=d, svd_solver="full").fit(sub[c * n : (c + 1) * n])

    t_sk, th_sk = best_over_threads(sk_pca, R, ths)
    t_sk *= C / L
    sub64 = sub.astype(np.float64)  # sklearn computes in the input dtype; ClassPCA's eigensolve is float64

    def sk_pca64() -> None:
        for c in range(L):
            PCA(n_components=d, svd_solver="full").fit(sub64[c * n : (c + 1) * n])

    t_sk64, th_sk64 = best_over_threads(sk_pca64, R, ths)
    t_sk64 *= C / L
    del sub64
    ref = PCA(n_components=d, svd_solver="full").fit(sub[:n])
    err = float(np.abs(pca.components_[0].cpu().numpy() - ref.components_).max())
    rows.append(("ClassPCA.fit (+ own-class scores)", f"batched [{threads}t]", t_ours,
                 f"sklearn PCA(full) loop{' (extrap)' if L < C else ''} [{th_sk}t]", t_sk,
                 f"max|dcomp|={err:.1e}; sklearn on float32 input"))
    rows.append(("", "", t_ours, f"sklearn PCA(full) loop{' (extrap)' if L < C else ''}, float64 [{th_sk64}t]",
                 t_sk64, "sklearn on float64 input"))
    scores, counts = scores_holder["s"]
    del sub

    # ---------------------------------------------------------------- (2) autoencoder training
    E, B = args.ae_epochs, args.ae_batch

    def ours_ae(engine: str) -> None:
        fit_autoencoder(scores, counts, epochs=E, batch_size=B, bottleneck=k, seed=0, engine=engine,
                        trainer_kwargs={"accelerator": "gpu"} if dev.type == "cuda" else None)
        sync(dev)

    t_ae_torch, th_torch = best_over_threads(lambda: ours_ae("torch"), R, ths)
    t_ae_pl, th_pl = best_over_threads(lambda: ours_ae("lightning"), R, ths)
    loop_codes = scores[:L].detach()

    def loop_ae() -> None:
        mods = BatchedAutoencoder(L, d, k, seed=0).to(dev).to_modules()
        gen = torch.Generator().manual_seed(0)
        for c, m in enumerate(mods):
            opt = torch.optim.Adam(m.parameters(), lr=1e-3)
            x_c = loop_codes[c]
            for _ in range(E):
                perm = torch.randperm(n, generator=gen).to(dev)
                for s in range(0, n, B):
                    xb = x_c[perm[s : s + B]]
                    opt.zero_grad(set_to_none=True)
                    loss = nn.functional.mse_loss(m(xb), xb)
                    loss.backward()
                    opt.step()
        sync(dev)

    t_loop, th_loop = best_over_threads(loop_ae, R, ths)
    t_loop *= C / L
    ext = " (extrap)" if L < C else ""
    rows.append((f"AE train {E} ep x {-(-n // B)} steps, B={B}", f"batched, Lightning [{th_pl}t]", t_ae_pl,
                 f"per-class Sequential+Adam loop{ext} [{th_loop}t]", t_loop, "same steps per class"))
    rows.append(("", f"batched, plain torch loop [{th_torch}t]", t_ae_torch,
                 f"per-class Sequential+Adam loop{ext} [{th_loop}t]", t_loop, ""))

    # Trained autoencoder + codes for (3) and (4) (one fit, untimed).
    ae, _ = fit_autoencoder(scores, counts, epochs=E, batch_size=B, bottleneck=k, seed=0, engine="torch")
    ae = ae.to(dev)
    with torch.no_grad():
        codes = ae.encode(scores)

    # ---------------------------------------------------------------- (3) KDE scoring
    kde = ClassConditionalKDE("scott").fit(codes, counts)
    Q = args.kde_queries
    queries = codes[:, :Q] + 0.1 * torch.randn(C, Q, k, generator=g).to(dev)

    def ours_kde() -> None:
        kde.log_density(queries)
        sync(dev)

    t_kde, th_kde = best_over_threads(ours_kde, R, ths, warmup=1)
    np_codes, np_q = codes[:L].cpu().double().numpy(), queries[:L].cpu().double().numpy()
    hs = kde.bandwidth_[:L].cpu().double().numpy()
    fitted = [KernelDensity(kernel="gaussian", bandwidth=float(hs[c]), leaf_size=n + 1).fit(np_codes[c])
              for c in range(L)]

    def sk_kde() -> None:
        for c in range(L):
            fitted[c].score_samples(np_q[c])

    t_sk_kde = timeit(sk_kde, R) * C / L  # sklearn's tree code is single-threaded
    kerr = float(np.abs(kde.log_density(queries[:L], torch.arange(L, device=dev)).double().cpu().numpy()
                        - np.stack([fitted[c].score_samples(np_q[c]) for c in range(L)])).max())
    rows.append((f"KDE score {Q} queries x C classes", f"ClassConditionalKDE [{th_kde}t]", t_kde,
                 f"sklearn KernelDensity loop{ext}", t_sk_kde, f"max|dlogp|={kerr:.1e} (float32)"))

    # ---------------------------------------------------------------- (4) prior vs VGG-19 per image
    prior = ClassPrior(pca, ae, kde).freeze().to(dev)  # frozen: PCA folded into the first encoder layer
    batches = [int(b) for b in args.image_batch.split(",")]
    prior_rows = []

    def time_fwd_and_grad(module: torch.nn.Module, x: torch.Tensor) -> tuple[float, int, float, int]:
        """Best-over-threads seconds (and threads) of a no-grad forward and of a forward+backward to x."""
        def fwd() -> None:
            with torch.no_grad():
                module(x)
            sync(dev)

        xg = x.clone().requires_grad_(True)

        def grad() -> None:
            module(xg).logsumexp(1).sum().backward()
            sync(dev)

        return (*best_over_threads(fwd, R, ths, warmup=1), *best_over_threads(grad, R, ths, warmup=1))

    for Bi in batches:
        t_p, th_p, t_pg, th_pg = time_fwd_and_grad(prior, torch.randn(Bi, D, generator=g).relu_().to(dev))
        prior_rows.append((Bi, t_p / Bi, th_p, t_pg / Bi, th_pg))
    Bv = batches[0]
    if not args.skip_vgg:
        import torchvision

        vgg = torchvision.models.vgg19(weights=None).eval().to(dev)
        for p in vgg.parameters():
            p.requires_grad_(False)
        t_vgg, th_v, t_vgg_g, th_vg = time_fwd_and_grad(vgg, torch.rand(Bv, 3, 224, 224, generator=g).to(dev))
        t_vgg, t_vgg_g = t_vgg / Bv, t_vgg_g / Bv
    else:
        t_vgg = t_vgg_g = float("nan")
        th_v = th_vg = 0
    for Bi, t_p, th_p, t_pg, th_pg in prior_rows:
        rows.append((f"exact {C}-class prior / image, B={Bi}", f"ClassPrior fwd [{th_p}t]", t_p,
                     f"VGG-19 fwd 224x224 / image, B={Bv} [{th_v}t]", t_vgg,
                     f"prior = {100 * t_p / t_vgg:.1f}% of VGG fwd"))
        rows.append(("", f"ClassPrior fwd+bwd to fc6 [{th_pg}t]", t_pg,
                     f"VGG-19 fwd+bwd to input, B={Bv} [{th_vg}t]", t_vgg_g,
                     f"prior = {100 * t_pg / t_vgg_g:.1f}% of VGG fwd+bwd"))

    if args.json:
        write_results(args.json, "bench_prior", bench_rows(rows), settings={
            "classes": C, "dim": D, "components": d, "bottleneck": k, "support": n, "repeats": R,
            "loop_classes": L, "threads_tried": ths, "device": str(dev), "quick": args.quick})

    # ---------------------------------------------------------------- table
    print()
    print(f"{'task':38s} {'ours':34s} {'s':>9s}   {'reference':50s} {'s':>9s} {'ref/ours':>9s}  note")
    for task, a, ta, b, tb, note in rows:
        ratio = tb / ta if tb == tb and ta > 0 else float("nan")
        tb_s = f"{tb:9.4f}" if tb == tb else f"{'':9s}"
        r_s = f"{ratio:9.1f}" if ratio == ratio else f"{'':9s}"
        print(f"{task:38s} {a:34s} {ta:9.4f}   {b:50s} {tb_s} {r_s}  {note}")


if __name__ == "__main__":
    main()
