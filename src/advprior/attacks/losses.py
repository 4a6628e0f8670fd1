"""Attack losses as plain functions: ``loss(scores (B, K), labels (B,), reduction) -> loss``.

An attack ascends the loss of the labels (untargeted) or descends it for the targets (targeted: the
attack negates the batch loss, as torchattacks does for cross-entropy).

* ``cross_entropy``: ``F.cross_entropy(scores, labels)``, the exact expression torchattacks uses, so FGSM
  and PGD stay bit-identical to torchattacks with the default loss.
* ``margin`` (Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural Networks", their f_6
  without the confidence clamp): ``max_{j != y} s_j - s_y`` on the unnormalized scores. Cross-entropy on
  scores whose label leads by more than ~100 nats has a gradient of exactly zero in float32 (the softmax
  of the other classes underflows); the margin's gradient is the difference of two score gradients and
  never underflows. For a targeted attack the same function is used on the targets and negated, i.e. the
  attack ascends ``s_t - max_{j != t} s_j``.

Scores of ``-inf`` (classes excluded by a shortlist) are allowed: they never win the ``max``; a label
whose own score is ``-inf`` has margin ``+inf`` and a finite (zero) gradient through its score.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[..., torch.Tensor]


def cross_entropy(scores: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``labels`` under ``softmax(scores)``; ``reduction``: ``"mean"`` (scalar) or ``"none"`` (B,)."""
    return F.cross_entropy(scores, labels, reduction=reduction)


def margin(scores: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``max_{j != y} s_j - s_y`` per row (positive: misclassified); ``reduction``: ``"mean"`` or ``"none"``."""
    own = scores.gather(1, labels[:, None]).squeeze(1)
    others = scores.scatter(1, labels[:, None], float("-inf"))
    per_row = others.amax(1) - own
    if reduction == "none":
        return per_row
    if reduction == "mean":
        return per_row.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "margin": margin}


def resolve_loss(loss: str | LossFn) -> LossFn:
    """A loss by name (``"ce"``, ``"margin"``) or a callable ``(scores, labels, reduction) -> loss``."""
    if callable(loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]
    raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable (scores, labels, reduction); got {loss!r}")


def loss_name(loss: LossFn) -> str:
    """The registry name of ``loss``, else its ``__name__`` (for reprs)."""
    for name, fn in LOSSES.items():
        if fn is loss:
            return name
    return getattr(loss, "__name__", type(loss).__name__)
