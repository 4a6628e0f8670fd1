"""The class-conditional prior ``log p(r | y, x)`` of the paper's sec. 6: fc6 -> PCA -> encoder -> KDE, for every
class y at once.

Two code spaces:

* ``space="per_class"`` (the paper): class y has its own PCA and its own autoencoder, so ``log p(r|y,x)`` of
  different y are densities of different variables (each class's own code) in different coordinates. Their
  differences across y mix how typical r is for y with how each class's arbitrary code scale came out; they
  are not calibrated against each other (standardizing the codes per class removes the scale, not the
  difference of spaces).
* ``space="shared"``: one PCA and one autoencoder for all classes, a class-conditional KDE in that one code
  space: ``log p(r|y,x)`` is the log density of the same code under every y's KDE, comparable across y.

Optional per-class standardization (``standardize``): each class's codes are mapped to
``(code - mean_y) / std_y`` (mean and std of the class's own support codes, per dim, ddof=1) before its KDE, and
the log density is that of the standardized code (no Jacobian), i.e. invariant to each class's code scale.
In the shared space the statistics are pooled over all classes (one map for every y, so the densities stay
comparable).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from advprior.prior.autoencoder import BatchedAutoencoder, fit_autoencoder
from advprior.prior.kde import ClassConditionalKDE
from advprior.prior.pca import ClassPCA, ResizableBuffersMixin, pad_by_class

log = logging.getLogger(__name__)

SPACES = ("per_class", "shared")


class ClassPrior(ResizableBuffersMixin, nn.Module):
    """``forward(fc6 (B, D)) -> log p(r | y, x)`` (B, C) for every class y; differentiable w.r.t. ``fc6``.

    Per-class space: entry ``[b, y]`` projects ``fc6[b]`` into class y's PCA subspace, encodes it with class y's
    encoder and scores the code under class y's KDE. Shared space: ``fc6[b]`` is projected and encoded once
    (the PCA and the autoencoder hold one "class") and the code is scored under every class's KDE. Log
    densities are in nats of the k-d code (of the standardized code with ``code_std_`` set). With ``classes``
    (B, K) only those (image, class) pairs are scored -> (B, K) (the top-K shortlist path).

    To reload: ``ClassPrior(ClassPCA(d), BatchedAutoencoder(Cs, d, k, depth), ClassConditionalKDE(),
    space=space, num_classes=C).load_state_dict(state)`` with ``Cs = C`` (per_class) or 1 (shared); every
    fitted tensor, the standardization statistics included, is a buffer or a parameter.
    """

    _resizable_buffers = ("code_mean_", "code_std_")

    def __init__(
        self,
        pca: ClassPCA,
        autoencoder: BatchedAutoencoder,
        kde: ClassConditionalKDE,
        fuse: bool = True,
        space: str = "per_class",
        num_classes: int | None = None,
        code_mean: torch.Tensor | None = None,
        code_std: torch.Tensor | None = None,
    ) -> None:
        """``fuse``: when the encoder's first layer is frozen, fold the PCA projection into it (one cached
        (C, widths[1], D) matrix, 1 GB for 1000 classes at 64 x 4096) so the all-class pass reads half the
        bytes of the (C, d, D) components; recomputed whenever the PCA or that layer changes.
        ``space``: "per_class" | "shared" (module doc); ``num_classes``: C, required for "shared" (the KDE's
        class count once fitted). ``code_mean``/``code_std``: (Cs, k) standardization statistics, or None."""
        super().__init__()
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        self.fuse = bool(fuse)
        self.space = space
        self._fused: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        # Unfitted pca/kde are allowed so a saved prior can be rebuilt with load_state_dict.
        Cs = autoencoder.num_classes
        if space == "per_class":
            C = Cs
            if num_classes is not None and int(num_classes) != C:
                raise ValueError(f"num_classes={num_classes} but the per-class autoencoder has {C} classes")
        else:
            if Cs != 1:
                raise ValueError(f"space='shared' needs one shared autoencoder (num_classes=1), got {Cs}")
            C = int(num_classes) if num_classes is not None else kde.num_classes
            if C < 1:
                raise ValueError("space='shared' needs num_classes (the KDE is not fitted yet)")
        if (pca.is_fitted and pca.num_classes != Cs) or (kde.is_fitted and kde.num_classes != C):
            raise ValueError(f"class counts differ: pca {pca.num_classes}, autoencoder {Cs}, kde {kde.num_classes}"
                             f" (space={space!r}, {C} classes)")
        if autoencoder.in_dim != pca.n_components:
            raise ValueError(f"autoencoder.in_dim={autoencoder.in_dim} != pca.n_components={pca.n_components}")
        self.pca, self.autoencoder, self.kde = pca, autoencoder, kde
        self._num_classes = C
        self.register_buffer("code_mean_", torch.empty(0) if code_mean is None else code_mean.detach().clone())
        self.register_buffer("code_std_", torch.empty(0) if code_std is None else code_std.detach().clone())
        if self.code_std_.numel() and self.code_std_.shape != (Cs, autoencoder.bottleneck):
            raise ValueError(f"code_std must be ({Cs}, {autoencoder.bottleneck}), got {tuple(self.code_std_.shape)}")
        self.loss_history: list[float] = []
        self.val_loss_history: list[float] = []
        self.best_epoch: int | None = None

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def standardized(self) -> bool:
        return self.code_std_.numel() > 0

    def standardize(self, codes: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """(Cs', B, k) codes -> ``(codes - mean) / std`` per code space (``classes`` (Cs',) picks the rows);
        the identity without statistics."""
        if not self.standardized:
            return codes
        mean, std = self.code_mean_, self.code_std_
        if classes is not None:
            mean, std = mean[classes], std[classes]
        return (codes - mean[:, None, :].to(codes.dtype)) / std[:, None, :].to(codes.dtype)

    #: images per internal chunk of the all-class pass (bounds the (C, chunk, n_max) kernel matrix).
    chunk_size: int = 256

    def forward(self, fc6: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        if fc6.ndim != 2:
            raise ValueError(f"fc6 must be (B, D) (flatten first), got shape {tuple(fc6.shape)}")
        if classes is None and fc6.shape[0] > self.chunk_size:
            return torch.cat([self(part) for part in fc6.split(self.chunk_size)])
        if classes is None:
            codes = self.standardize(self.encode_all(fc6))  # (Cs, B, k)
            if self.space == "shared":
                return self.kde.log_density(codes[0]).T  # the one code under every class's KDE
            return self.kde.log_density(codes).T  # (B, C)
        classes = torch.as_tensor(classes, dtype=torch.long, device=fc6.device)
        if classes.ndim != 2 or classes.shape[0] != fc6.shape[0]:
            raise ValueError(f"classes must be (B={fc6.shape[0]}, K), got shape {tuple(classes.shape)}")
        B, K = classes.shape
        flat = classes.reshape(-1)
        if self.space == "shared":
            codes = self.standardize(self.autoencoder.encode(self.pca.transform(fc6, 0).unsqueeze(0)))[0]
            codes = codes.repeat_interleave(K, 0).unsqueeze(1)  # (B*K, 1, k)
        else:
            z = self.pca.transform(fc6.repeat_interleave(K, 0), flat)  # (B*K, d)
            codes = self.standardize(self.autoencoder.encode(z.unsqueeze(1), flat), flat)  # (B*K, 1, k)
        return self.kde.log_density(codes, flat).reshape(B, K)

    def encode_all(self, fc6: torch.Tensor) -> torch.Tensor:
        """(B, D) -> codes (Cs, B, k) in every code space (Cs = C per class, 1 shared), before standardizing."""
        fused = self._fused_first_layer()
        if fused is not None:
            W, b = fused  # (Cs, h, D), (Cs, h): W0 P_c and b0 - W0 P_c m_c
            Cs, h, D = W.shape
            h0 = (W.reshape(Cs * h, D) @ fc6.to(W.dtype).T).reshape(Cs, h, -1).transpose(1, 2) + b[:, None, :]
            return self.autoencoder.encode_from_preactivation(h0)
        return self.autoencoder.encode(self.pca.transform_all(fc6))

    def _fused_first_layer(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Cached (W0 P, b0 - W0 P m) if fusing applies (first encoder layer frozen), else None."""
        W0, b0 = self.autoencoder.enc_weight[0], self.autoencoder.enc_bias[0]
        if not self.fuse or W0.requires_grad or b0.requires_grad or not self.pca.is_fitted:
            return None
        srcs = (self.pca.components_, self.pca.proj_mean_, W0, b0)
        # Tensor identity + in-place version: refitting, loading, moving or an optimizer step all invalidate.
        key = tuple((id(t), t._version, t.device) for t in srcs)
        if self._fused is None or self._fused[0] != key:
            self._fused = None  # free the old copy before building the new one
            with torch.no_grad():
                P = self.pca.components_
                W = torch.bmm(W0.to(P.dtype), P)  # (C, h, D)
                b = b0.to(P.dtype) - torch.bmm(W0.to(P.dtype), self.pca.proj_mean_[..., None]).squeeze(-1)
            self._fused = (key, W, b)
        return self._fused[1], self._fused[2]

    def freeze(self) -> "ClassPrior":
        """Eval mode and ``requires_grad=False`` on every parameter (gradients still flow to the input)."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self


def holdout_split(labels: torch.Tensor, num_classes: int, val_fraction: float, seed: int) -> torch.Tensor:
    """(N,) bool mask of held-out points: ``round(val_fraction * n_c)`` (at least 1 when ``val_fraction > 0``)
    of each class's n_c points, drawn by a seeded permutation per class; all False for ``val_fraction = 0``."""
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    labels = labels.detach().to("cpu", torch.long)
    if val_fraction == 0:
        return torch.zeros(labels.shape[0], dtype=torch.bool)
    counts = torch.bincount(labels, minlength=num_classes)
    n_val = (counts.double() * val_fraction).round().long().clamp_min(1)
    small = torch.nonzero(counts <= n_val).flatten().tolist()
    if small:
        raise ValueError(f"val_fraction={val_fraction}: class {small[0]} has {int(counts[small[0]])} support point(s), "
                         "too few to hold any out; lower prior.val_fraction or add support images")
    keys = torch.rand(labels.shape[0], generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    order = torch.argsort(labels.double() * 2 + keys)  # by class, random within a class
    offsets = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(labels)
    rank[order] = torch.arange(labels.shape[0]) - offsets[labels[order]]
    return rank < n_val[labels]


def project_by_class(pca: ClassPCA, features: torch.Tensor, labels: torch.Tensor, num_classes: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row into its own class's PCA subspace, padded by class: ``(scores (C, m_max, d), counts (C,))``
    (class c's rows in their original order; one batched product, each class's components read once)."""
    x, counts = pad_by_class(features.to(pca.components_.dtype), labels, num_classes)  # (C, m_max, D)
    scores = torch.baddbmm(-pca.proj_mean_[:, None, :], x, pca.components_.transpose(1, 2))
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < counts[:, None]
    return scores * valid[..., None].to(scores.dtype), counts


def fit_class_prior(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int | None = None,
    *,
    n_components: int = 128,
    bottleneck: int = 8,
    depth: int | None = None,
    negative_slope: float = 0.33,
    bandwidth: str | float | torch.Tensor = "scott",
    kernel_cov: str = "isotropic",
    cv_grid: Any = None,
    cv_folds: int = 5,
    epochs: int = 50,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    engine: str = "lightning",
    trainer_kwargs: dict[str, Any] | None = None,
    space: str = "per_class",
    standardize: bool = False,
    val_fraction: float = 0.0,
    patience: int | None = None,
    min_delta: float = 0.0,
) -> ClassPrior:
    """PCA -> autoencoder -> encode the support points -> (standardize) -> KDE; returns a frozen ClassPrior.

    ``features`` (N, D) fc6 activations of the support images, ``labels`` (N,) in ``[0, C)``. ``space``: one
    PCA and autoencoder per class (paper) or one shared by all classes (module doc). ``val_fraction``: that
    share of each class's support points (seeded with ``seed``) is held out of the PCA, the autoencoder and
    the KDE; it is the autoencoder's validation set (best-epoch weights, early stopping after ``patience``
    epochs without an improvement > ``min_delta``; ``epochs`` is then the maximum) and, with
    ``bandwidth="heldout"``, the points whose log-likelihood chooses the KDE bandwidth. Per class PCA needs
    more than ``n_components`` training points per class (shared: in total). The per-epoch autoencoder losses
    are in ``prior.loss_history`` and ``prior.val_loss_history``, the kept epoch in ``prior.best_epoch``.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if (bandwidth == "heldout" or patience is not None) and not val_fraction:
        what = "bandwidth='heldout'" if bandwidth == "heldout" else f"patience={patience} (early stopping)"
        raise ValueError(f"{what} needs held-out support points: set prior.val_fraction > 0 (e.g. 0.2)")
    C = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    held = holdout_split(labels, C, val_fraction, seed).to(labels.device)
    if held.any():
        tr_x, tr_y, va_x, va_y = features[~held], labels[~held], features[held], labels[held]
    else:  # no copy of the (N, D) features
        tr_x, tr_y, va_x, va_y = features, labels, None, None
    pca = ClassPCA(n_components)
    val = None
    if space == "per_class":
        scores, counts = pca.fit_transform(tr_x, tr_y, C)  # (C, n, d), class c's rows in original order
        if va_x is not None:
            val = project_by_class(pca, va_x, va_y, C)
    else:
        scores, counts = pca.fit_transform(tr_x, torch.zeros_like(tr_y), 1)  # (1, N_train, d), original order
        if va_x is not None:
            val = (pca.transform(va_x, 0).unsqueeze(0), torch.tensor([va_x.shape[0]]))
    log.info("PCA (%s): %d code space(s), %d-d; mean explained variance %.3f; %d support points held out",
             space, pca.num_classes, n_components, float(pca.explained_variance_ratio_.sum(1).mean()),
             int(held.sum()))
    ae, history = fit_autoencoder(
        scores, counts, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, bottleneck=bottleneck,
        depth=depth, negative_slope=negative_slope, engine=engine, trainer_kwargs=trainer_kwargs,
        val_codes=None if val is None else val[0], val_counts=None if val is None else val[1],
        patience=patience, min_delta=min_delta,
    )
    ae = ae.to(scores.device).eval()
    with torch.no_grad():
        codes = ae.encode(scores)  # (Cs, n, k); padding rows encode to junk, masked out by counts
        val_codes = ae.encode(val[0]) if val is not None else None
    mean = std = None
    if standardize:
        valid = (torch.arange(codes.shape[1], device=codes.device)[None, :] < counts.to(codes.device)[:, None])
        w = valid[..., None].to(codes.dtype)
        n = counts.to(device=codes.device, dtype=codes.dtype)[:, None]
        mean = (codes * w).sum(1) / n
        std = (((codes - mean[:, None]) * w).pow(2).sum(1) / (n - 1).clamp_min(1)).sqrt()
        if not bool((std > 0).all()):
            raise ValueError("standardize: a code dimension has zero spread over a class's support codes; "
                             "set prior.standardize=false")
        codes = (codes - mean[:, None]) / std[:, None]
        val_codes = (val_codes - mean[:, None]) / std[:, None] if val_codes is not None else None
    if space == "shared":  # the one code space, split by class for the class-conditional KDE
        codes, counts = pad_by_class(codes[0], tr_y, C)
        if val_codes is not None:
            val_codes, val_counts = pad_by_class(val_codes[0], va_y, C)
            val = (val_codes, val_counts)
    heldout = (val_codes, val[1]) if bandwidth == "heldout" else None
    kde = ClassConditionalKDE(bandwidth, kernel_cov, cv_grid=cv_grid, cv_folds=cv_folds, seed=seed)
    kde.fit(codes, counts, heldout=heldout)
    prior = ClassPrior(pca, ae, kde, space=space, num_classes=C, code_mean=mean, code_std=std).freeze()
    prior.loss_history = list(history)
    prior.val_loss_history = list(history.val)
    prior.best_epoch = history.best_epoch
    return prior
