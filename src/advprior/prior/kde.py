"""Gaussian kernel density estimates in the autoencoder code space (paper sec. 6, eq. 6), log-space throughout.

Kernel: ``K(u) = N(u; 0, Sigma)``; ``log f(x) = logsumexp_i(-(x - x_i)^T Sigma^-1 (x - x_i) / 2) - log n
- log det(2 pi Sigma) / 2``.

* ``kernel_cov="isotropic"``: ``Sigma = h^2 I``; a numeric ``bandwidth`` is ``h`` itself. The rules of thumb are
  scipy's factors times the mean per-dimension standard deviation (ddof=1) of the points:
  scott ``h = n^(-1/(k+4)) * mean_j std_j``, silverman ``h = (n (k+2) / 4)^(-1/(k+4)) * mean_j std_j``.
* ``kernel_cov="full"``: ``Sigma = factor^2 * cov(points)`` (ddof=1), exactly scipy's ``gaussian_kde``; a numeric
  ``bandwidth`` is the factor (scipy's ``bw_method`` scalar), the rules give scipy's scott/silverman factors.
* ``bandwidth="cv"``: the value on a log-spaced grid (default: the scott value times ``logspace(-1, 1, 21)``;
  or ``cv_grid`` absolute values, ``h`` or factor as above) maximizing the K-fold held-out log-likelihood over
  the points (folds from a seeded random permutation). For ``"full"`` the kernel shape is the covariance of
  all points; only the factor is cross-validated.
* ``bandwidth="loo"``: the same with leave-one-out (every point scored under the KDE of all the others).
* ``bandwidth="heldout"``: the grid value maximizing the log-likelihood of separate held-out points (e.g. the
  codes of support images the encoder never trained on) under the KDE of the fitted points, so the
  bandwidth is judged on points distributed like the queries, not on the in-sample ones.

Squared distances are computed in whitened, centered coordinates as ``|q|^2 + |p|^2 - 2 q.p`` (one batched
matrix product); centering keeps the cancellation error at the level of the data spread, so densities far
from the data (hundreds of nats down) keep full relative precision.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

from advprior.prior.pca import ResizableBuffersMixin, check_finite

log = logging.getLogger(__name__)

_RULES = ("scott", "silverman")
_SELECTORS = ("cv", "loo", "heldout")  # grid searches of the held-out log-likelihood
_KERNEL_COVS = ("isotropic", "full")
_LOG_2PI = math.log(2 * math.pi)


def rule_factor(rule: str, n: torch.Tensor | int, k: int) -> torch.Tensor:
    """scipy's bandwidth factors: scott ``n^(-1/(k+4))``, silverman ``(n (k+2)/4)^(-1/(k+4))``."""
    n = torch.as_tensor(n, dtype=torch.float64)
    if rule == "scott":
        return n.pow(-1.0 / (k + 4))
    if rule == "silverman":
        return (n * (k + 2) / 4.0).pow(-1.0 / (k + 4))
    raise ValueError(f"rule must be one of {_RULES}, got {rule!r}")


def kfold_assignment(counts: torch.Tensor, n_max: int, folds: int, seed: int) -> torch.Tensor:
    """Fold id (C, n_max) of every point: a seeded random permutation per class, position ``r`` -> fold
    ``r % folds``; padding positions get -1."""
    counts = torch.as_tensor(counts, dtype=torch.long)
    C = counts.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    keys = torch.rand(C, n_max, generator=gen, dtype=torch.float64)
    valid = torch.arange(n_max)[None, :] < counts[:, None]
    keys = keys.masked_fill(~valid, 2.0)
    rank = keys.argsort(-1).argsort(-1)  # position of every point in its class's permutation
    return torch.where(valid, rank % folds, torch.full_like(rank, -1))


def _check_bandwidth(bandwidth: object) -> None:
    if isinstance(bandwidth, str):
        if bandwidth not in (*_RULES, *_SELECTORS):
            raise ValueError(f"bandwidth must be one of {(*_RULES, *_SELECTORS)} or a number > 0, got {bandwidth!r}")
        return
    if isinstance(bandwidth, bool):
        raise ValueError(f"bandwidth must be one of {(*_RULES, *_SELECTORS)} or a number > 0, got {bandwidth!r}")
    t = torch.as_tensor(bandwidth, dtype=torch.float64)
    if t.ndim > 1 or not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(f"bandwidth must be > 0 (a number, or a (C,) tensor of them), got {bandwidth!r}")


def _masked_moments(points: torch.Tensor, counts: torch.Tensor, valid: torch.Tensor):  # noqa: ANN202
    """Per-class mean (C, k) and covariance (C, k, k), ddof=1, over the valid rows."""
    m = valid[..., None].to(points.dtype)
    n = counts.to(points.dtype)
    mean = (points * m).sum(1) / n[:, None]
    xc = (points - mean[:, None]) * m
    cov = xc.transpose(1, 2) @ xc / (n - 1).clamp_min(1)[:, None, None]
    return mean, cov


def _pairwise_sq(q: torch.Tensor, p: torch.Tensor, p_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared distances (C, B, n) between q (C, B, k) and p (C, n, k), clamped at 0."""
    if p_sq is None:
        p_sq = p.pow(2).sum(-1)
    d2 = torch.baddbmm(q.pow(2).sum(-1, keepdim=True) + p_sq[:, None, :], q, p.transpose(1, 2), alpha=-2.0)
    return d2.clamp_min(0)


def _grid_scores(d2, usable, query_valid, grid, k, log_jac):  # noqa: ANN001, ANN202
    """Summed log-likelihood (C, G) of query points under isotropic KDEs of bandwidth g on reference points.

    ``d2`` (C, m, n) squared distances query-reference in coordinates where the kernel is g^2 I, ``usable``
    (C, m, n) which references may explain each query, ``query_valid`` (C, m) real queries, ``grid`` (C, G),
    ``log_jac`` (C,) the log Jacobian of the map to those coordinates. Returns (best (C,), scores (C, G))."""
    n_ref = usable.sum(-1).to(d2.dtype)  # (C, m)
    scores = []
    for g in grid.unbind(1):  # loop over grid values, batched over classes
        lk = (-d2 / (2 * g[:, None, None] ** 2)).masked_fill(~usable, -math.inf)
        ll = torch.logsumexp(lk, -1) - n_ref.clamp_min(1).log() - k * g[:, None].log()
        ll = ll - 0.5 * k * _LOG_2PI + log_jac[:, None]
        scores.append(ll.masked_fill(~query_valid, 0).sum(1))
    scores = torch.stack(scores, 1)  # (C, G)
    best = torch.gather(grid, 1, scores.argmax(1, keepdim=True)).squeeze(1)
    return best, scores


def _cv_select(z, counts, valid, grid, folds, seed, log_jac):  # noqa: ANN001, ANN202
    """Per class, the grid value g maximizing the K-fold held-out log-likelihood of an isotropic KDE with
    bandwidth g on ``z`` (C, n, k) (coordinates where the kernel is g^2 I; ``log_jac`` (C,) is the log Jacobian
    of the map to them). ``folds=None``: leave-one-out. Returns (best (C,), scores (C, G)): scores are summed
    held-out log densities."""
    C, n, k = z.shape
    if folds is None:
        fold = torch.arange(n, device=z.device).expand(C, n)
    else:
        fold = kfold_assignment(counts.cpu(), n, folds, seed).to(z.device)
    # Point j may explain point i only if j is real and in another fold.
    usable = valid[:, None, :] & (fold[:, :, None] != fold[:, None, :])
    return _grid_scores(_pairwise_sq(z, z), usable, valid, grid, k, log_jac)


def fit_kde_params(
    points: torch.Tensor,
    counts: torch.Tensor,
    bandwidth: str | float | torch.Tensor,
    kernel_cov: str,
    cv_grid: torch.Tensor | Sequence[float] | None = None,
    cv_folds: int = 5,
    seed: int = 0,
    heldout: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Batched KDE fit over classes. ``points`` (C, n_max, k) padded, ``counts`` (C,); ``heldout`` (points
    (C, m_max, k), counts (C,), every class >= 1) for ``bandwidth="heldout"``.

    Returns buffers: ``center`` (C, k), ``whiten`` (C, k, k) (= chol(Sigma)^-1), ``points_w`` (C, n_max, k)
    whitened centered points (padding 0), ``log_norm`` (C,) = -log n - k/2 log 2pi - log sqrt det Sigma,
    ``bandwidth`` (C,) (h or factor), ``covariance`` (C, k, k) = Sigma, and ``cv_grid``/``cv_scores`` (C, G)
    (the grid and the summed held-out log-likelihoods) when selecting on a grid.
    """
    _check_bandwidth(bandwidth)
    if kernel_cov not in _KERNEL_COVS:
        raise ValueError(f"kernel_cov must be one of {_KERNEL_COVS}, got {kernel_cov!r}")
    if points.ndim != 3:
        raise ValueError(f"points must be (C, n_max, k), got shape {tuple(points.shape)}")
    if not points.dtype.is_floating_point:
        points = points.to(torch.float32)
    C, n_max, k = points.shape
    counts = torch.as_tensor(counts, dtype=torch.long, device=points.device)
    if counts.shape != (C,) or bool((counts < 1).any()) or bool((counts > n_max).any()):
        raise ValueError(f"counts must be ({C},) with values in [1, {n_max}], got {counts.tolist()[:20]}")
    valid = torch.arange(n_max, device=points.device)[None, :] < counts[:, None]
    check_finite(points[valid], "KDE points", "a KDE needs finite support points: drop those rows or fix "
                 "what produced them (the features, the PCA, the autoencoder)")
    points = points.masked_fill(~valid[..., None], 0)  # padding rows are never data, whatever they hold
    needs_spread = isinstance(bandwidth, str) or kernel_cov == "full"
    if needs_spread and bool((counts < 2).any()):
        c = int(torch.nonzero(counts < 2)[0])
        raise ValueError(f"class {c} has {int(counts[c])} point(s); bandwidth={bandwidth!r} with "
                         f"kernel_cov={kernel_cov!r} needs >= 2 to estimate the spread")
    if kernel_cov == "full" and bool((counts <= k).any()):
        c = int(torch.nonzero(counts <= k)[0])
        raise ValueError(f"class {c} has {int(counts[c])} points; kernel_cov='full' in k={k} dims needs > k")
    dt = points.dtype
    mean, cov = _masked_moments(points, counts, valid)
    eye = torch.eye(k, dtype=dt, device=points.device).expand(C, k, k)
    if kernel_cov == "isotropic":
        base = torch.diagonal(cov, dim1=1, dim2=2).clamp_min(0).sqrt().mean(-1)  # mean per-dim std
        shape_chol = eye
        z = (points - mean[:, None]) * valid[..., None].to(dt)
    else:
        base = torch.ones(C, dtype=dt, device=points.device)
        shape_chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info > 0).any()):
            c = int(torch.nonzero(info > 0)[0])
            raise ValueError(f"class {c}: the points' covariance is singular; kernel_cov='full' needs points "
                             f"spanning all k={k} dims (use kernel_cov='isotropic')")
        # Whitened by the data covariance, the full kernel is isotropic with bandwidth = factor.
        z = torch.linalg.solve_triangular(shape_chol, (points - mean[:, None]).transpose(1, 2), upper=False)
        z = z.transpose(1, 2) * valid[..., None].to(dt)

    cv_grid_t = cv_scores = None
    if isinstance(bandwidth, str) and bandwidth in _RULES:
        g = rule_factor(bandwidth, counts.cpu(), k).to(device=points.device, dtype=dt) * base
    elif isinstance(bandwidth, str):  # cv | loo | heldout
        if bandwidth == "cv" and (cv_folds < 2 or bool((counts < cv_folds).any())):
            raise ValueError(f"cv_folds must be >= 2 and <= every class's count (min {int(counts.min())}), "
                             f"got {cv_folds!r}")
        if bandwidth == "heldout":
            held, held_valid = _heldout_coordinates(heldout, C, k, mean, shape_chol, points)
        if cv_grid is None:
            scott = rule_factor("scott", counts.cpu(), k).to(device=points.device, dtype=dt) * base
            mult = torch.logspace(-1, 1, 21, dtype=dt, device=points.device)
            cv_grid_t = scott[:, None] * mult[None, :]
        else:
            gt = torch.as_tensor(cv_grid, dtype=dt, device=points.device)
            if gt.ndim != 1 or gt.numel() < 1 or not bool((gt > 0).all()):
                raise ValueError(f"cv_grid must be a non-empty 1-d sequence of values > 0, got {cv_grid!r}")
            cv_grid_t = gt[None, :].expand(C, -1)
        log_jac = -torch.diagonal(shape_chol, dim1=1, dim2=2).log().sum(-1)
        if bandwidth == "heldout":
            usable = held_valid[:, :, None] & valid[:, None, :]
            g, cv_scores = _grid_scores(_pairwise_sq(held, z), usable, held_valid, cv_grid_t, k, log_jac)
        else:
            g, cv_scores = _cv_select(z, counts, valid, cv_grid_t, cv_folds if bandwidth == "cv" else None,
                                      seed, log_jac)
    else:
        g = torch.as_tensor(bandwidth, dtype=dt, device=points.device)
        if g.ndim == 1 and g.shape[0] != C:
            raise ValueError(f"a per-class bandwidth tensor must have shape ({C},), got {tuple(g.shape)}")
        g = g.expand(C).clone()
    if not bool((g > 0).all()) or not bool(torch.isfinite(g).all()):
        c = int(torch.nonzero(~((g > 0) & torch.isfinite(g)))[0])
        raise ValueError(f"bandwidth must be > 0; class {c} got {float(g[c])} from bandwidth={bandwidth!r} "
                         f"(its points have zero spread?)")
    chol = shape_chol * g[:, None, None]  # Cholesky factor of Sigma
    whiten = torch.linalg.solve_triangular(chol, eye, upper=False)
    points_w = ((points - mean[:, None]) @ whiten.transpose(1, 2)) * valid[..., None].to(dt)
    log_norm = (
        -counts.to(dt).log() - 0.5 * k * _LOG_2PI - torch.diagonal(chol, dim1=1, dim2=2).log().sum(-1)
    )
    out = dict(center=mean, whiten=whiten, points_w=points_w, log_norm=log_norm, bandwidth=g,
               covariance=chol @ chol.transpose(1, 2), counts=counts.clone())
    if cv_grid_t is not None:
        out.update(cv_grid=cv_grid_t.contiguous(), cv_scores=cv_scores)
    return out


def _heldout_coordinates(heldout, C, k, mean, shape_chol, points):  # noqa: ANN001, ANN202
    """Held-out points centered by the fitted points' mean and mapped by the same kernel shape as them:
    ``(z (C, m_max, k), valid (C, m_max))``."""
    if heldout is None:
        raise ValueError("bandwidth='heldout' needs held-out points: fit(points, counts, heldout=(points, counts))"
                         " (in the prior: prior.val_fraction > 0)")
    hp, hc = heldout
    hp = torch.as_tensor(hp).to(device=points.device, dtype=points.dtype)
    hc = torch.as_tensor(hc, dtype=torch.long, device=points.device)
    if hp.ndim != 3 or hp.shape[0] != C or hp.shape[2] != k:
        raise ValueError(f"held-out points must be ({C}, m_max, {k}), got shape {tuple(hp.shape)}")
    if hc.shape != (C,) or bool((hc < 1).any()) or bool((hc > hp.shape[1]).any()):
        raise ValueError(f"held-out counts must be ({C},) with values in [1, {hp.shape[1]}] (every class needs a "
                         f"held-out point), got {hc.tolist()[:20]}")
    valid = torch.arange(hp.shape[1], device=points.device)[None, :] < hc[:, None]
    z = torch.linalg.solve_triangular(shape_chol, (hp - mean[:, None]).transpose(1, 2), upper=False)
    return z.transpose(1, 2) * valid[..., None].to(points.dtype), valid


def kde_log_density(
    queries: torch.Tensor,
    center: torch.Tensor,
    whiten: torch.Tensor,
    points_w: torch.Tensor,
    log_norm: torch.Tensor,
    counts: torch.Tensor,
) -> torch.Tensor:
    """Log density (C, B) of ``queries`` (C, B, k) under per-class KDEs given by ``fit_kde_params`` buffers."""
    q = (queries - center[:, None, :]) @ whiten.transpose(1, 2)  # (C, B, k) whitened
    # log kernel -|q - p|^2 / 2 = q.p - |p|^2/2 - |q|^2/2: one batched GEMM plus in-place updates, no
    # (C, B, n, k) difference tensor.
    lk = torch.baddbmm(points_w.pow(2).sum(-1).mul(-0.5)[:, None, :], q, points_w.transpose(1, 2))
    lk = lk.sub_(q.pow(2).sum(-1, keepdim=True).mul(0.5))
    n_max = points_w.shape[1]
    if bool((counts < n_max).any()):
        pad = torch.arange(n_max, device=q.device)[None, :] >= counts[:, None]  # (C, n_max)
        lk = lk.masked_fill_(pad[:, None, :], -math.inf)
    return torch.logsumexp(lk, -1) + log_norm[:, None]


_BUFFERS = ("center", "whiten", "points_w", "log_norm", "bandwidth", "covariance", "counts", "cv_grid",
            "cv_scores")


class ClassConditionalKDE(ResizableBuffersMixin, nn.Module):
    """One Gaussian KDE per class, fitted and evaluated for all classes at once (see module docstring).

    ``fit(points (C, n_max, k), counts (C,))`` (or a list of (n_c, k) tensors); ``bandwidth`` may also be a
    (C,) tensor of per-class values. ``log_density(queries (C, B, k)) -> (C, B)``: entry ``[c, b]`` is the log
    density of query ``queries[c, b]`` (class c's code of query b) under class c's KDE. Queries (B, k) are
    scored under every class. ``classes`` (C',) picks the KDEs for the leading dim of the queries.
    Fitted buffers (state dict): ``center_``, ``whiten_``, ``points_w_``, ``log_norm_``, ``bandwidth_`` (C,),
    ``covariance_`` (C, k, k) kernel covariance, ``counts_``, ``cv_grid_``/``cv_scores_`` (C, G) with "cv", "loo",
    "heldout".
    """

    _resizable_buffers = tuple(f"{b}_" for b in _BUFFERS)

    def __init__(
        self,
        bandwidth: str | float | torch.Tensor = "scott",
        kernel_cov: str = "isotropic",
        cv_grid: Sequence[float] | torch.Tensor | None = None,
        cv_folds: int = 5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_bandwidth(bandwidth)
        if kernel_cov not in _KERNEL_COVS:
            raise ValueError(f"kernel_cov must be one of {_KERNEL_COVS}, got {kernel_cov!r}")
        self.bandwidth = bandwidth
        self.kernel_cov = kernel_cov
        self.cv_grid = cv_grid
        self.cv_folds = int(cv_folds)
        self.seed = int(seed)
        for b in _BUFFERS:
            self.register_buffer(f"{b}_", torch.empty(0, dtype=torch.long if b == "counts" else torch.float32))

    @property
    def is_fitted(self) -> bool:
        return self.points_w_.ndim == 3

    @property
    def num_classes(self) -> int:
        return int(self.points_w_.shape[0]) if self.is_fitted else 0

    def fit(self, points: torch.Tensor | Sequence[torch.Tensor], counts: torch.Tensor | None = None,
            heldout: tuple[torch.Tensor, torch.Tensor] | None = None) -> "ClassConditionalKDE":
        """Fit every class's KDE on its real rows ``points[c, :counts[c]]``; returns self. ``heldout``:
        ``(points (C, m_max, k), counts (C,))`` scored to choose the bandwidth with ``bandwidth="heldout"``."""
        if not isinstance(points, torch.Tensor):
            items = list(points)
            if not items:
                raise ValueError("points must be a (C, n_max, k) tensor or a non-empty list of (n_c, k) tensors")
            counts = torch.tensor([t.shape[0] for t in items], dtype=torch.long)
            padded = items[0].new_zeros(len(items), int(counts.max()), items[0].shape[-1])
            for c, t in enumerate(items):  # list input only
                padded[c, : t.shape[0]] = t
            points = padded
        if counts is None:
            if points.ndim != 3:
                raise ValueError(f"points must be (C, n_max, k), got shape {tuple(points.shape)}")
            counts = torch.full((points.shape[0],), points.shape[1], dtype=torch.long)
        params = fit_kde_params(points.detach(), counts, self.bandwidth, self.kernel_cov, self.cv_grid,
                                self.cv_folds, self.seed, heldout)
        for b in _BUFFERS:
            setattr(self, f"{b}_", params.get(b, torch.empty(0, dtype=points.dtype, device=points.device)))
        return self

    def log_density(self, queries: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """(C', B, k) or (B, k) queries -> log densities (C', B); C' = C or ``len(classes)``."""
        if not self.is_fitted:
            raise RuntimeError("ClassConditionalKDE is not fitted; call fit(points, counts) first")
        C, _, k = self.points_w_.shape
        bufs = [self.center_, self.whiten_, self.points_w_, self.log_norm_, self.counts_]
        if classes is not None:
            classes = torch.as_tensor(classes, dtype=torch.long, device=self.points_w_.device)
            if classes.ndim != 1:
                raise ValueError(f"classes must be a 1-d index tensor, got shape {tuple(classes.shape)}")
            bufs = [t[classes] for t in bufs]
        lead = bufs[0].shape[0]
        if queries.ndim == 2:
            queries = queries.unsqueeze(0).expand(lead, -1, -1)
        if queries.ndim != 3 or queries.shape[0] != lead or queries.shape[2] != k:
            raise ValueError(f"queries must be ({lead}, B, {k}) or (B, {k}), got shape {tuple(queries.shape)}")
        check_finite(queries, "KDE queries", "their density is undefined; check the features they come from "
                     "(a model emitting NaN/inf, float16 overflow?)")
        return kde_log_density(queries.to(self.points_w_.dtype), *bufs)

    def forward(self, queries: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        return self.log_density(queries, classes)

    def extra_repr(self) -> str:
        return f"bandwidth={self.bandwidth!r}, kernel_cov={self.kernel_cov!r}, classes={self.num_classes}"


class GaussianKDE(ClassConditionalKDE):
    """A single Gaussian KDE: ``fit(points (n, k))``, ``log_density(queries (B, k)) -> (B,)``.

    Same math, options and buffers as ``ClassConditionalKDE`` with one class (buffers keep a leading class
    dim of 1); ``h`` is the fitted bandwidth (h, or the factor for ``kernel_cov="full"``) and
    ``kernel_covariance`` the (k, k) kernel covariance Sigma.
    """

    def fit(self, points: torch.Tensor, counts: None = None,  # type: ignore[override]
            heldout: torch.Tensor | None = None) -> "GaussianKDE":
        """Fit on ``points`` (n, k); ``heldout`` (m, k) points choose the bandwidth with "heldout"; returns self."""
        if not isinstance(points, torch.Tensor) or points.ndim != 2:
            raise ValueError(f"points must be an (n, k) tensor, got {getattr(points, 'shape', type(points))}")
        if heldout is not None:
            if not isinstance(heldout, torch.Tensor) or heldout.ndim != 2:
                raise ValueError(f"heldout must be an (m, k) tensor, got {getattr(heldout, 'shape', type(heldout))}")
            heldout = (heldout.unsqueeze(0), torch.tensor([heldout.shape[0]]))
        return super().fit(points.unsqueeze(0), heldout=heldout)  # type: ignore[return-value]

    def log_density(self, queries: torch.Tensor, classes: None = None) -> torch.Tensor:  # type: ignore[override]
        """(B, k) -> (B,) log densities."""
        if queries.ndim != 2:
            raise ValueError(f"queries must be (B, k), got shape {tuple(queries.shape)}")
        return super().log_density(queries.unsqueeze(0)).squeeze(0)

    @property
    def h(self) -> float:
        """The fitted bandwidth (isotropic ``h``; the scipy factor for ``kernel_cov='full'``)."""
        return float(self.bandwidth_[0])

    @property
    def kernel_covariance(self) -> torch.Tensor:
        """Sigma (k, k): ``h^2 I`` (isotropic) or ``factor^2 cov(points)`` (full)."""
        return self.covariance_[0]
