"""Bayesian prior defense (paper sec. 6): per-class PCA -> per-class autoencoder -> per-class Gaussian KDE,
all batched over classes, combined with the classifier's likelihood into a posterior.

Names resolve lazily (PEP 562) so that using only the PCA or the KDE does not import pytorch_lightning.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ClassPCA": "advprior.prior.pca",
    "BatchedAutoencoder": "advprior.prior.autoencoder",
    "AutoencoderModule": "advprior.prior.autoencoder",
    "fit_autoencoder": "advprior.prior.autoencoder",
    "GaussianKDE": "advprior.prior.kde",
    "ClassConditionalKDE": "advprior.prior.kde",
    "ClassPrior": "advprior.prior.class_prior",
    "fit_class_prior": "advprior.prior.class_prior",
    "BayesianPriorClassifier": "advprior.prior.posterior",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from advprior.prior.autoencoder import AutoencoderModule, BatchedAutoencoder, fit_autoencoder
    from advprior.prior.class_prior import ClassPrior, fit_class_prior
    from advprior.prior.kde import ClassConditionalKDE, GaussianKDE
    from advprior.prior.pca import ClassPCA
    from advprior.prior.posterior import BayesianPriorClassifier


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'advprior.prior' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
