"""Per-class PCA of fc6 features, fitted for all classes at once (batched eigendecompositions).

Every class ``c`` gets its own mean ``mean_[c]`` (D,) and top-``d`` principal axes ``components_[c]`` (d, D),
exactly as ``sklearn.decomposition.PCA(n_components=d, svd_solver="full")`` fitted on that class's rows alone
(same sign convention: sklearn's ``svd_flip(u_based_decision=False)``, i.e. the largest-magnitude entry of
every component is positive).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
import torch
from torch import nn

log = logging.getLogger(__name__)

# Bytes of float64 working memory one chunk of classes may use while fitting (padded data + Gram/covariance).
_DEFAULT_CHUNK_BYTES = 1 << 30


@contextmanager
def intra_op_threads(n: int | None, device: torch.device) -> Iterator[None]:
    """Temporarily run CPU torch ops on ``n`` intra-op threads (no-op for None or non-CPU devices)."""
    if n is None or device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class ResizableBuffersMixin:
    """Lets ``load_state_dict`` fill buffers that were registered empty (shape fixed only by ``fit``)."""

    _resizable_buffers: tuple[str, ...] = ()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        for name in self._resizable_buffers:
            key = prefix + name
            if key in state_dict and self._buffers.get(name) is not None:
                src = state_dict[key]
                cur = self._buffers[name]
                if cur.shape != src.shape:
                    self._buffers[name] = torch.empty(src.shape, dtype=cur.dtype, device=cur.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]


def class_layout(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows grouped by class: ``order`` (N,) (stable: original order within a class), ``counts`` (C,),
    ``offsets`` (C+1,) so class ``c``'s rows are ``order[offsets[c]:offsets[c+1]]``."""
    labels = labels.to(torch.long)
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    offsets = torch.zeros(num_classes + 1, dtype=torch.long, device=labels.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return order, counts, offsets


def pad_by_class(
    values: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None, fill: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter rows ``values`` (N, ...) into a padded ``(C, n_max, ...)`` tensor by ``labels`` (N,).

    Returns ``(padded, counts)``; class ``c``'s rows are ``padded[c, :counts[c]]`` in their original order,
    padding rows hold ``fill``.
    """
    labels = labels.to(device=values.device, dtype=torch.long)
    C = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    order, counts, offsets = class_layout(labels, C)
    n_max = int(counts.max()) if C > 0 else 0
    sorted_labels = labels[order]
    pos = torch.arange(order.numel(), device=values.device) - offsets[sorted_labels]
    padded = values.new_full((C, n_max, *values.shape[1:]), fill)
    padded[sorted_labels, pos] = values[order]
    return padded, counts


def _check_features_labels(features: torch.Tensor, labels: torch.Tensor) -> None:
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"labels must be (N,) with N={features.shape[0]} matching features, got shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    check_finite(features, "features", "check the feature extractor (a diverged model, float16 overflow?) or drop "
                 "those rows")


def check_finite(t: torch.Tensor, name: str, fix: str) -> None:
    """ValueError naming ``name``, how many rows hold NaN/inf (and which), and ``fix``."""
    if not t.is_floating_point():
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        rows = torch.nonzero(bad.reshape(-1, t.shape[-1]).any(-1)).flatten().tolist() if t.ndim else [0]
        raise ValueError(
            f"{name} hold NaN or inf in {len(rows)} row(s) (first: {rows[:5]}, counted over the flattened leading "
            f"dims of shape {tuple(t.shape)}); {fix}"
        )


class ClassPCA(ResizableBuffersMixin, nn.Module):
    """Per-class PCA to ``n_components`` dimensions, all classes fitted and applied in batch.

    Buffers (saved in the state dict, float32): ``mean_`` (C, D), ``components_`` (C, d, D) (orthonormal rows,
    largest-variance first), ``explained_variance_`` (C, d) (ddof=1), ``explained_variance_ratio_`` (C, d),
    ``proj_mean_`` (C, d) = ``components_ @ mean_`` (used by ``transform_all``), ``counts_`` (C,).
    """

    _resizable_buffers = (
        "mean_", "components_", "explained_variance_", "explained_variance_ratio_", "proj_mean_", "counts_"
    )

    def __init__(
        self, n_components: int = 128, chunk_bytes: int = _DEFAULT_CHUNK_BYTES, eigh_threads: int | None = 1
    ) -> None:
        """``chunk_bytes``: float64 working memory per chunk of classes. ``eigh_threads``: CPU threads for the
        batched ``eigh`` (MKL's threaded eigensolver on many small matrices ran 4-15x slower with 2 threads than
        with 1 on a shared 2-core host; None leaves torch's setting alone)."""
        super().__init__()
        if eigh_threads is not None and eigh_threads < 1:
            raise ValueError(f"eigh_threads must be None or >= 1, got {eigh_threads!r}")
        self.eigh_threads = eigh_threads
        if not isinstance(n_components, int) or isinstance(n_components, bool) or n_components < 1:
            raise ValueError(f"n_components must be a positive int, got {n_components!r}")
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes!r}")
        self.n_components = n_components
        self.chunk_bytes = int(chunk_bytes)
        for name in self._resizable_buffers:
            self.register_buffer(name, torch.empty(0, dtype=torch.long if name == "counts_" else torch.float32))

    @property
    def num_classes(self) -> int:
        return int(self.mean_.shape[0]) if self.mean_.ndim == 2 else 0

    @property
    def is_fitted(self) -> bool:
        return self.components_.ndim == 3

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("ClassPCA is not fitted; call fit(features, labels) first")

    # ------------------------------------------------------------------ fitting
    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> "ClassPCA":
        """Fit one PCA per class on ``features`` (N, D) grouped by ``labels`` (N,) in ``[0, C)``; returns self."""
        self._fit(features, labels, num_classes, want_scores=False)
        return self

    def fit_transform(
        self, features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit, and return every class's own rows projected into its own subspace.

        Returns ``(scores, counts)``: ``scores`` (C, n_max, d) float32, class ``c``'s rows (in their original
        order) in ``scores[c, :counts[c]]``, zero padding after; ``counts`` (C,) long. The scores come from the
        eigendecomposition itself (``U * s``), at no extra cost.
        """
        return self._fit(features, labels, num_classes, want_scores=True)

    def _fit(self, features, labels, num_classes, want_scores):  # noqa: ANN001, ANN202
        _check_features_labels(features, labels)
        labels = labels.to(device=features.device, dtype=torch.long)
        N, D = features.shape
        d = self.n_components
        C = int(num_classes) if num_classes is not None else (int(labels.max()) + 1 if N else 0)
        if C < 1:
            raise ValueError(f"num_classes must be >= 1, got {C} (num_classes={num_classes!r}, N={N})")
        if N and (int(labels.min()) < 0 or int(labels.max()) >= C):
            raise ValueError(f"labels must lie in [0, {C}), got range [{int(labels.min())}, {int(labels.max())}]")
        if d > D:
            raise ValueError(f"n_components={d} exceeds the feature dimension D={D}")
        order, counts, offsets = class_layout(labels, C)
        too_small = torch.nonzero(counts < d + 1).flatten().tolist()
        if too_small:
            c = too_small[0]
            raise ValueError(
                f"ClassPCA(n_components={d}): class {c} has {int(counts[c])} points but PCA to d={d} needs at least "
                f"d+1={d + 1} per class (centering removes one dimension); {len(too_small)} class(es) are too small "
                f"(first few: {too_small[:10]}). The paper's setting is d=128 with 2^k=256 support points per class "
                f"for k=8, i.e. at least 256 training images per class on ImageNet."
            )
        dev = features.device
        mean = torch.empty(C, D, dtype=torch.float32, device=dev)
        comps = torch.empty(C, d, D, dtype=torch.float32, device=dev)
        ev = torch.empty(C, d, dtype=torch.float32, device=dev)
        evr = torch.empty(C, d, dtype=torch.float32, device=dev)
        proj_mean = torch.empty(C, d, dtype=torch.float32, device=dev)
        n_max = int(counts.max())
        scores = torch.zeros(C, n_max, d, dtype=torch.float32, device=dev) if want_scores else None

        # Chunks of classes bound the float64 working set; each chunk is one batched eigendecomposition.
        per_class = 8 * n_max * (D + min(n_max, D)) + 8 * min(n_max, D) ** 2
        chunk = max(1, min(C, self.chunk_bytes // max(per_class, 1)))
        for c0 in range(0, C, chunk):
            c1 = min(C, c0 + chunk)
            out = self._fit_chunk(features, labels, order, counts, offsets, c0, c1)
            mean[c0:c1], comps[c0:c1], ev[c0:c1], evr[c0:c1], proj_mean[c0:c1], sc = out
            if scores is not None:
                scores[c0:c1, : sc.shape[1]] = sc
        self.mean_, self.components_ = mean, comps
        self.explained_variance_, self.explained_variance_ratio_ = ev, evr
        self.proj_mean_, self.counts_ = proj_mean, counts.clone()
        log.debug("ClassPCA fitted: %d classes, D=%d, d=%d, chunk=%d classes", C, D, d, chunk)
        return (scores, counts) if want_scores else None

    def _fit_chunk(self, features, labels, order, counts, offsets, c0, c1):  # noqa: ANN001, ANN202
        d = self.n_components
        D = features.shape[1]
        rows = order[offsets[c0] : offsets[c1]]
        lab = labels[rows] - c0
        cnt = counts[c0:c1]
        n = int(cnt.max())
        pos = torch.arange(rows.numel(), device=rows.device) - (offsets[lab + c0] - offsets[c0])
        X = torch.zeros(c1 - c0, n, D, dtype=torch.float64, device=features.device)
        X[lab, pos] = features[rows].to(torch.float64)
        cntf = cnt.to(torch.float64)
        mu = X.sum(1) / cntf[:, None]  # (c, D)
        X.sub_(mu[:, None, :])
        # Padding rows must be exactly zero after centering, so they add only zero eigenvalues.
        valid = torch.arange(n, device=X.device)[None, :] < cnt[:, None]
        X.mul_(valid[..., None].to(X.dtype))
        if n <= D:
            # Gram trick: X X^T (n, n) has the same non-zero eigenvalues as X^T X (D, D).
            G = X @ X.transpose(1, 2)
            total = torch.diagonal(G, dim1=1, dim2=2).sum(-1)
            with intra_op_threads(self.eigh_threads, G.device):
                lam, U = torch.linalg.eigh(G)
            lam = lam.flip(-1)[:, :d]
            U = U.flip(-1)[:, :, :d]  # (c, n, d)
            s = lam.clamp_min(0).sqrt()
            V = (U.transpose(1, 2) @ X) / s.clamp_min(torch.finfo(torch.float64).tiny)[..., None]  # (c, d, D)
            sc = U * s[:, None, :]
        else:
            S = X.transpose(1, 2) @ X  # (c, D, D)
            total = torch.diagonal(S, dim1=1, dim2=2).sum(-1)
            with intra_op_threads(self.eigh_threads, S.device):
                lam, W = torch.linalg.eigh(S)
            lam = lam.flip(-1)[:, :d]
            V = W.flip(-1)[:, :, :d].transpose(1, 2)  # (c, d, D)
            sc = X @ V.transpose(1, 2)
        degenerate = lam[:, -1] <= lam[:, 0] * 1e-12
        if bool(degenerate.any()):
            log.warning("ClassPCA: classes %s have rank < n_components=%d; their trailing components are not "
                        "meaningful", (torch.nonzero(degenerate).flatten() + c0).tolist()[:20], d)
        # sklearn's svd_flip(u_based_decision=False): the largest |entry| of every component is positive.
        idx = V.abs().argmax(-1, keepdim=True)
        signs = torch.sign(torch.gather(V, -1, idx)).squeeze(-1)
        signs = torch.where(signs == 0, torch.ones_like(signs), signs)
        V = V * signs[..., None]
        sc = sc * signs[:, None, :] * valid[..., None].to(sc.dtype)
        ev = lam / (cntf[:, None] - 1)
        evr = lam / total[:, None]
        pm = (V @ mu[..., None]).squeeze(-1)
        f32 = torch.float32
        return mu.to(f32), V.to(f32), ev.to(f32), evr.to(f32), pm.to(f32), sc.to(f32)

    # ------------------------------------------------------------------ projection
    def transform(self, features: torch.Tensor, cls: int | torch.Tensor) -> torch.Tensor:
        """Project ``features`` (B, D) into class ``cls``'s subspace -> (B, d).

        ``cls`` is one int (all rows, same class) or a (B,) tensor (row ``i`` into class ``cls[i]``; this gathers
        ``B`` component matrices, ``B * d * D * 4`` bytes).
        """
        self._require_fitted()
        if features.ndim != 2 or features.shape[1] != self.components_.shape[2]:
            raise ValueError(
                f"features must be (B, {self.components_.shape[2]}), got shape {tuple(features.shape)}"
            )
        x = features.to(self.components_.dtype)
        if isinstance(cls, int) or (isinstance(cls, torch.Tensor) and cls.ndim == 0):
            c = int(cls)
            if not 0 <= c < self.num_classes:
                raise ValueError(f"cls must lie in [0, {self.num_classes}), got {c}")
            return (x - self.mean_[c]) @ self.components_[c].T
        cls = torch.as_tensor(cls, device=x.device, dtype=torch.long)
        if cls.shape != (x.shape[0],):
            raise ValueError(f"cls must be an int or a ({x.shape[0]},) tensor, got shape {tuple(cls.shape)}")
        centered = (x - self.mean_[cls]).unsqueeze(-1)  # (B, D, 1)
        return torch.bmm(self.components_[cls], centered).squeeze(-1)

    def transform_all(self, features: torch.Tensor) -> torch.Tensor:
        """Project every query into every class's subspace: ``features`` (B, D) -> (C, B, d).

        Computed as ``P_c x - P_c m_c`` (one (C*d, D) x (D, B) matrix product), never materializing the C
        centered copies of the queries.
        """
        self._require_fitted()
        C, d, D = self.components_.shape
        if features.ndim != 2 or features.shape[1] != D:
            raise ValueError(f"features must be (B, {D}), got shape {tuple(features.shape)}")
        x = features.to(self.components_.dtype)
        proj = (self.components_.reshape(C * d, D) @ x.T).reshape(C, d, -1)  # (C, d, B)
        return proj.transpose(1, 2) - self.proj_mean_[:, None, :]

    def inverse_transform(self, codes: torch.Tensor, cls: int) -> torch.Tensor:
        """Back to feature space for one class: ``codes`` (B, d) -> (B, D)."""
        self._require_fitted()
        return codes.to(self.components_.dtype) @ self.components_[int(cls)] + self.mean_[int(cls)]

    def extra_repr(self) -> str:
        shape = tuple(self.components_.shape) if self.is_fitted else "unfitted"
        return f"n_components={self.n_components}, components={shape}"
