"""The Bayesian prior defense (paper sec. 6): ``p(y | x, r) ∝ p(y | x) p(r | y, x)``, normalized over classes.

Attacking it: the normalized log posterior saturates. Once the true class leads by ~100 nats (easy with a
KDE far from its support points), ``log_softmax`` rounds its own entry to exactly 0 and the others'
softmax underflows in float32, so cross-entropy on the log posterior has an input gradient of exactly zero
and FGSM/PGD with it do not move (gradient masking, not robustness). The unnormalized joint scores
``log p(y|x) + w log p(r|y,x)`` (``output="joint"``, ``joint_scores``) have the same argmax; a margin loss
on them (``advprior.attacks.losses.margin``) keeps a gradient at any lead.
"""
from __future__ import annotations

import logging
import numbers

import torch
from torch import nn
from torch.nn import functional as F

from advprior.prior.class_prior import ClassPrior

log = logging.getLogger(__name__)


OUTPUTS = ("log_posterior", "joint")


class BayesianPriorClassifier(nn.Module):
    """[0,1] images (B, 3, H, W) -> log posterior (B, C), or the unnormalized joint scores (``output="joint"``).

    ``joint = log_softmax(logits) + weight * log p(r | y, x)`` and ``log_posterior = log_softmax(joint)``
    over all C classes, where ``r`` is the ``feature_layer`` activation (flattened to (B, D)) of the same
    forward pass as the logits. Both have the same argmax (the prediction). ``top_k=K``: only the model's K
    most likely classes are scored by the prior; the others are excluded, i.e. get joint score and log
    posterior ``-inf`` (the posterior is renormalized over the shortlist). Cross-entropy on an excluded
    label is ``inf`` but its gradient stays finite. ``top_k=None`` (or >= C) is exact.
    Differentiable end to end. ``with_output(kind)`` gives a view with the other output sharing the
    model and the prior.
    """

    def __init__(
        self,
        model: nn.Module,
        prior: ClassPrior,
        feature_layer: str = "fc6",
        weight: float = 1.0,
        top_k: int | None = None,
        output: str = "log_posterior",
    ) -> None:
        super().__init__()
        if not hasattr(model, "forward_with_features"):
            raise ValueError(f"model must provide forward_with_features (a Classifier), got {type(model).__name__}")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"top_k must be None or a positive int, got {top_k!r}")
        if not isinstance(weight, numbers.Real) or isinstance(weight, bool):
            raise ValueError(f"weight must be a number, got {weight!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.model = model
        self.prior = prior
        self.feature_layer = feature_layer
        self.weight = float(weight)
        self.top_k = top_k
        self.output = output

    @property
    def num_classes(self) -> int:
        return self.prior.num_classes

    def with_output(self, output: str) -> "BayesianPriorClassifier":
        """The same classifier (shared model and prior, no copies) returning ``output`` from ``forward``."""
        return BayesianPriorClassifier(self.model, self.prior, self.feature_layer, self.weight, self.top_k,
                                       output).train(self.training)

    def _likelihood_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = self.model.forward_with_features(x, [self.feature_layer])
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"model has {logits.shape[1]} classes but the prior has {self.num_classes}")
        return F.log_softmax(logits, dim=1), feats[self.feature_layer].flatten(1)

    def _joint(self, log_lik: torch.Tensor, r: torch.Tensor, top_k: int | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log_prior, joint), both (B, C); ``-inf`` off the shortlist."""
        C = log_lik.shape[1]
        if top_k is None or top_k >= C:
            log_prior = self.prior(r)
            return log_prior, log_lik + self.weight * log_prior
        top = log_lik.topk(top_k, dim=1).indices  # (B, K)
        lp = self.prior(r, classes=top)  # (B, K)
        neg_inf = torch.full_like(log_lik, float("-inf"))
        log_prior = neg_inf.scatter(1, top, lp)
        joint = neg_inf.scatter(1, top, log_lik.gather(1, top) + self.weight * lp)
        return log_prior, joint

    def components(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``log_likelihood`` (log_softmax of the logits), ``log_prior`` (log p(r|y,x); -inf off the shortlist),
        ``joint`` (log_likelihood + weight * log_prior) and ``log_posterior`` (log_softmax of joint), each (B, C),
        from one forward pass."""
        log_lik, r = self._likelihood_and_features(x)
        log_prior, joint = self._joint(log_lik, r, self.top_k)
        return {"log_likelihood": log_lik, "log_prior": log_prior, "joint": joint,
                "log_posterior": F.log_softmax(joint, dim=1)}

    def joint_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) unnormalized ``log p(y|x) + weight * log p(r|y,x)``; argmax = the posterior's prediction."""
        log_lik, r = self._likelihood_and_features(x)
        return self._joint(log_lik, r, self.top_k)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        joint = self.joint_scores(x)
        return joint if self.output == "joint" else F.log_softmax(joint, dim=1)

    @torch.no_grad()
    def shortlist_agreement(self, x: torch.Tensor) -> float:
        """Fraction of images whose top-1 under the ``top_k`` shortlist posterior equals the exact one's."""
        log_lik, r = self._likelihood_and_features(x)
        if self.top_k is None or self.top_k >= log_lik.shape[1]:
            return 1.0
        exact = self._joint(log_lik, r, None)[1].argmax(1)
        short = self._joint(log_lik, r, self.top_k)[1].argmax(1)
        return float((short == exact).float().mean())
