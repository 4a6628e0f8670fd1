"""FGSM at many epsilons for the price of one gradient: one forward+backward, then one forward per eps."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from advprior.attacks.base import Attack, check_eps, fgsm_step
from advprior.attacks.losses import LossFn, loss_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    """Everything an eps sweep produced for one batch (all tensors detached; on the images' device
    except ``epsilons``).

    Attributes:
        epsilons: ``(K,)`` float64 on CPU, the budgets in [0,1] pixel units, in the order given.
        clean_logits: ``(B, num_classes)`` scores of the clean images (the forward used for the gradient).
        adv_logits: ``(K, B, num_classes)`` scores of the k-th adversarial batch.
        grad_sign: ``(B, C, H, W)`` sign of the loss gradient (values -1, 0, 1; negated loss if targeted).
        labels: ``(B,)`` the labels attacked (given labels / targets, or the clean predictions).
        images: ``(B, C, H, W)`` the clean images in [0,1].
    """

    epsilons: torch.Tensor
    clean_logits: torch.Tensor
    adv_logits: torch.Tensor
    grad_sign: torch.Tensor
    labels: torch.Tensor
    images: torch.Tensor

    def __len__(self) -> int:
        return int(self.epsilons.shape[0])

    def adv_images(self, k: int) -> torch.Tensor:
        """``(B, C, H, W)`` adversarial batch for ``epsilons[k]``, bit-identical to ``FGSM(model, eps)``."""
        return fgsm_step(self.images, self.grad_sign, float(self.epsilons[k]))


class FGSMSweep(Attack):
    r"""FGSM from "Explaining and Harnessing Adversarial Examples" (Goodfellow et al., ICLR 2015,
    https://arxiv.org/abs/1412.6572), evaluated at K budgets from a single gradient.

    Distance measure: L-inf.

    FGSM's direction ``sign(d loss / d x)`` does not depend on eps, so one forward+backward per batch
    gives the clean scores and the gradient sign; each eps then costs one (no-grad) forward to score
    ``clamp(x + eps * sign, 0, 1)``. K separate FGSM attack-and-evaluate passes cost K forward+backward
    plus K forwards. The adversarial images are bit-identical to ``FGSM(model, eps, targeted)(images,
    labels)`` for each eps (same expression, same gradient).

    Args:
        model: ``nn.Module`` mapping images ``(B, C, H, W)`` in [0,1] to scores ``(B, num_classes)``.
            Run in eval mode during the sweep; every submodule's mode is restored.
        epsilons: non-empty sequence (or 1-D tensor) of budgets in [0,1] pixel units (no default); the
            paper's 0-255 scale values divided by 255. Kept in the given order; 0 gives the clean images.
        targeted: if True, ``labels`` are target classes and are required. Default False.
        loss: ``"ce"`` (default), ``"margin"`` or a callable, as in ``FGSM``.

    Call ``sweep.sweep(images, labels=None) -> SweepResult`` or ``sweep(images, labels=None) -> adv``:
        - images: ``(B, C, H, W)`` floating point in [0,1].
        - labels: ``(B,)`` integer class indices, or None (untargeted only) to use the model's clean
          predictions, taken from the same forward pass as the gradient.
        - ``sweep`` returns a ``SweepResult`` (scores per eps; images on demand via ``adv_images(k)``);
          ``__call__`` returns all adversarial images stacked ``(K, B, C, H, W)`` in [0,1], unscored,
          detached, same dtype and device as ``images``. L-inf bound per eps as in ``FGSM``.

    Example::

        >>> sweep = FGSMSweep(model, epsilons=[e / 255 for e in (0, 0.25, 0.5, 0.85, 1, 2, 4, 8)])
        >>> res = sweep.sweep(images, labels)
        >>> acc = (res.adv_logits.argmax(-1) == labels).float().mean(dim=1)   # (K,) accuracy per eps
        >>> adv_k = res.adv_images(3)                                          # (B, C, H, W)
    """

    def __init__(
        self, model: nn.Module, epsilons: Sequence[float] | torch.Tensor, targeted: bool = False,
        loss: str | LossFn = "ce",
    ) -> None:
        super().__init__(model, loss)
        if isinstance(epsilons, torch.Tensor):
            if epsilons.ndim != 1:
                raise ValueError(f"epsilons must be a 1-D sequence of floats in [0,1]; got shape {tuple(epsilons.shape)}")
            epsilons = epsilons.tolist()
        if isinstance(epsilons, (str, bytes)) or not isinstance(epsilons, Sequence) or len(epsilons) == 0:
            raise ValueError(f"epsilons must be a non-empty sequence of floats in [0,1]; got {epsilons!r}")
        self.epsilons: list[float] = [check_eps(e, f"epsilons[{i}]") for i, e in enumerate(epsilons)]
        self.targeted = bool(targeted)

    def _repr_args(self) -> dict[str, object]:
        return {"epsilons": self.epsilons, "targeted": self.targeted, "loss": loss_name(self.loss)}

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        _, _, grad = self._input_gradient(images, labels, self.targeted)
        sign = grad.sign()
        return torch.stack([fgsm_step(images, sign, eps) for eps in self.epsilons])

    def sweep(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> SweepResult:
        """Clean scores, gradient sign and the scores of every eps's adversarial batch; see the class doc."""
        with self._attack_context(images, labels) as (images, labels):
            clean_logits, labels, grad = self._input_gradient(images, labels, self.targeted)
            grad_sign = grad.sign()
            del grad
            images = images.detach()
            adv_logits = torch.empty(
                (len(self.epsilons), *clean_logits.shape), dtype=clean_logits.dtype, device=clean_logits.device
            )
            with torch.no_grad():
                for k, eps in enumerate(self.epsilons):
                    adv_logits[k] = self._forward(fgsm_step(images, grad_sign, eps))
        return SweepResult(
            epsilons=torch.tensor(self.epsilons, dtype=torch.float64),
            clean_logits=clean_logits,
            adv_logits=adv_logits,
            grad_sign=grad_sign,
            labels=labels,
            images=images,
        )
