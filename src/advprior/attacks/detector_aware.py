"""PGD that fools a classifier and its density detector at once (Carlini & Wagner 2017)."""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

from advprior.attacks.losses import margin
from advprior.attacks.pgd import PGD

log = logging.getLogger(__name__)


class DetectorAwarePGD(PGD):
    r"""The density-detector attack of "Adversarial Examples Are Not Easily Detected: Bypassing Ten
    Detection Methods" (Carlini & Wagner, AISec 2017, https://arxiv.org/abs/1705.07263, sec. 6 on the
    kernel density detector), run as L-inf PGD.

    The defended model scores every class with ``joint_y = log p(y|x) + w log p(r|y,x)`` and a detector
    flags inputs whose prior density ``log p(r | y_hat, x)`` at the reported label ``y_hat`` is low. PGD
    ascends, per image,

        ``margin(joint, y) + c * log p(r | t, x)``,  ``t = argmax_{j != y} joint_j``

    (untargeted: make some class ``t`` beat the label ``y`` AND make the features typical of ``t``);
    targeted: ``-margin(joint, t) + c * log p(r | t, x)`` for the target ``t``. ``c = 0`` is plain margin PGD
    on the joint scores. ``t`` is re-chosen at every step (no gradient through the choice).

    Args:
        model: the defended classifier, anything with ``components(x) -> {"joint": (B, C), "log_prior":
            (B, C)}`` from one forward pass (a ``BayesianPriorClassifier``); its ``forward`` must have the
            joint's argmax (log posterior or joint scores).
        eps, alpha, steps, random_start, targeted, generator, restarts, schedule: as ``PGD`` (restarts keep
            the first one that fools the classifier, else the highest objective; no early stop: every step
            keeps raising the density).
        c: weight of the detector term, a finite number >= 0. Default 1.

    Call ``attack(images, labels=None, seeds=None)`` as ``PGD``.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        alpha: float,
        steps: int,
        c: float = 1.0,
        random_start: bool = True,
        targeted: bool = False,
        generator: torch.Generator | None = None,
        restarts: int = 1,
        schedule: str = "constant",
    ) -> None:
        if not callable(getattr(model, "components", None)):
            raise ValueError(f"model must provide components(x) -> {{'joint', 'log_prior'}} (a "
                             f"BayesianPriorClassifier); got {type(model).__name__}")
        super().__init__(model, eps, alpha, steps, random_start, targeted, generator, restarts, loss=margin,
                         schedule=schedule)
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
            raise ValueError(f"c must be a finite number >= 0 (the weight of log p(r|t,x)); got {c!r}")
        self.c = float(c)

    def _repr_args(self) -> dict[str, object]:
        return {**super()._repr_args(), "c": self.c}

    def _objective(
        self, x: torch.Tensor, labels: torch.Tensor | None, targeted: bool, reduction: str = "mean"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        comp = self.model.components(x)
        joint, log_prior = comp["joint"], comp["log_prior"]
        if labels is None:
            labels = joint.detach().argmax(dim=1)
        else:
            self._check_label_range(labels, joint.shape[1])
        if targeted:
            target = labels
            loss = -margin(joint, labels, reduction="none")
        else:
            target = joint.detach().scatter(1, labels[:, None], float("-inf")).argmax(1)
            loss = margin(joint, labels, reduction="none")
        loss = loss + self.c * log_prior.gather(1, target[:, None]).squeeze(1)
        return joint, labels, loss.mean() if reduction == "mean" else loss
