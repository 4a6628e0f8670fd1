"""The class-conditional prior ``log p(r | y, x)`` of the paper's sec. 6: fc6 -> class-y PCA -> class-y encoder
-> class-y KDE, for every class y at once."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from advprior.prior.autoencoder import BatchedAutoencoder, fit_autoencoder
from advprior.prior.kde import ClassConditionalKDE
from advprior.prior.pca import ClassPCA

log = logging.getLogger(__name__)


class ClassPrior(nn.Module):
    """``forward(fc6 (B, D)) -> log p(r | y, x)`` (B, C) for every class y; differentiable w.r.t. ``fc6``.

    Entry ``[b, y]`` projects ``fc6[b]`` into class y's PCA subspace, encodes it with class y's encoder and
    scores the code under class y's KDE (log density in nats of the k-d code). With ``classes`` (B, K) only
    those (image, class) pairs are scored -> (B, K) (the top-K shortlist path).
    To reload: ``ClassPrior(ClassPCA(d), BatchedAutoencoder(C, d, k, depth), ClassConditionalKDE())
    .load_state_dict(state)`` (the fitted tensors are all buffers or parameters).
    """

    def __init__(
        self, pca: ClassPCA, autoencoder: BatchedAutoencoder, kde: ClassConditionalKDE, fuse: bool = True
    ) -> None:
        """``fuse``: when the encoder's first layer is frozen, fold the PCA projection into it (one cached
        (C, widths[1], D) matrix, 1 GB for 1000 classes at 64 x 4096) so the all-class pass reads half the
        bytes of the (C, d, D) components; recomputed whenever the PCA or that layer changes."""
        super().__init__()
        self.fuse = bool(fuse)
        self._fused: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        # Unfitted pca/kde are allowed so a saved prior can be rebuilt with load_state_dict.
        C = autoencoder.num_classes
        if (pca.is_fitted and pca.num_classes != C) or (kde.is_fitted and kde.num_classes != C):
            raise ValueError(f"class counts differ: pca {pca.num_classes}, autoencoder {C}, kde {kde.num_classes}")
        if autoencoder.in_dim != pca.n_components:
            raise ValueError(f"autoencoder.in_dim={autoencoder.in_dim} != pca.n_components={pca.n_components}")
        self.pca, self.autoencoder, self.kde = pca, autoencoder, kde
        self.loss_history: list[float] = []

    @property
    def num_classes(self) -> int:
        return self.autoencoder.num_classes

    #: images per internal chunk of the all-class pass (bounds the (C, chunk, n_max) kernel matrix).
    chunk_size: int = 256

    def forward(self, fc6: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        if fc6.ndim != 2:
            raise ValueError(f"fc6 must be (B, D) (flatten first), got shape {tuple(fc6.shape)}")
        if classes is None and fc6.shape[0] > self.chunk_size:
            return torch.cat([self(part) for part in fc6.split(self.chunk_size)])
        if classes is None:
            fused = self._fused_first_layer()
            if fused is not None:
                W, b = fused  # (C, h, D), (C, h): W0 P_c and b0 - W0 P_c m_c
                C, h, D = W.shape
                h0 = (W.reshape(C * h, D) @ fc6.to(W.dtype).T).reshape(C, h, -1).transpose(1, 2) + b[:, None, :]
                codes = self.autoencoder.encode_from_preactivation(h0)
            else:
                z = self.pca.transform_all(fc6)  # (C, B, d)
                codes = self.autoencoder.encode(z)  # (C, B, k)
            return self.kde.log_density(codes).T  # (B, C)
        classes = torch.as_tensor(classes, dtype=torch.long, device=fc6.device)
        if classes.ndim != 2 or classes.shape[0] != fc6.shape[0]:
            raise ValueError(f"classes must be (B={fc6.shape[0]}, K), got shape {tuple(classes.shape)}")
        B, K = classes.shape
        flat = classes.reshape(-1)
        z = self.pca.transform(fc6.repeat_interleave(K, 0), flat)  # (B*K, d)
        codes = self.autoencoder.encode(z.unsqueeze(1), flat)  # (B*K, 1, k)
        return self.kde.log_density(codes, flat).reshape(B, K)

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
) -> ClassPrior:
    """PCA -> autoencoder -> encode the support points -> KDE, all classes batched; returns a frozen ClassPrior.

    ``features`` (N, D) fc6 activations of the support images, ``labels`` (N,) in ``[0, C)``; every class needs
    at least ``n_components + 1`` points. The per-epoch autoencoder losses are in ``prior.loss_history``.
    """
    pca = ClassPCA(n_components)
    scores, counts = pca.fit_transform(features, labels, num_classes)
    log.info("ClassPCA: %d classes, %d-d; mean explained variance %.3f", pca.num_classes, n_components,
             float(pca.explained_variance_ratio_.sum(1).mean()))
    ae, history = fit_autoencoder(
        scores, counts, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, bottleneck=bottleneck,
        depth=depth, negative_slope=negative_slope, engine=engine, trainer_kwargs=trainer_kwargs,
    )
    ae = ae.to(scores.device).eval()
    with torch.no_grad():
        codes = ae.encode(scores)  # padding rows encode to junk, masked out by counts in the KDE
    kde = ClassConditionalKDE(bandwidth, kernel_cov, cv_grid=cv_grid, cv_folds=cv_folds, seed=seed)
    kde.fit(codes, counts)
    prior = ClassPrior(pca, ae, kde).freeze()
    prior.loss_history = list(history)
    return prior
