"""Fast Gradient Sign Method (Goodfellow et al. 2015), untargeted or targeted."""
from __future__ import annotations

import logging

import torch
from torch import nn

from advprior.attacks.base import Attack, check_eps, fgsm_step
from advprior.attacks.losses import LossFn, loss_name

log = logging.getLogger(__name__)


class FGSM(Attack):
    r"""FGSM from "Explaining and Harnessing Adversarial Examples" (Goodfellow et al., ICLR 2015,
    https://arxiv.org/abs/1412.6572).

    Distance measure: L-inf.

    One gradient step: ``adv = clamp(x + eps * sign(d loss / d x), 0, 1)`` with ``loss`` the batch mean of
    the cross-entropy (default) or the margin of the model's scores (the mean only scales the gradient;
    the sign is per sample).
    Untargeted: increases the loss of ``labels``. Targeted: decreases the loss of ``labels`` (the
    targets), i.e. ``adv = clamp(x - eps * sign(d CE(target) / d x), 0, 1)``. Bit-identical to
    ``torchattacks.FGSM`` on the same model and inputs.

    Args:
        model: ``nn.Module`` mapping images ``(B, C, H, W)`` in [0,1] to scores ``(B, K)`` (logits or
            log-posteriors). Run in eval mode during the attack; every submodule's mode is restored.
        eps: L-inf budget in [0,1] pixel units (no default). The paper's eps = 0.85 on the 0-255
            scale is ``eps=0.85/255``. ``eps=0`` returns the images unchanged.
        targeted: if True, ``labels`` are target classes and are required. Default False.
        loss: ``"ce"`` (default; bit-identical to torchattacks), ``"margin"`` (Carlini-Wagner, for scores
            whose cross-entropy gradient underflows, e.g. a log posterior) or a callable, see ``losses``.

    Call ``attack(images, labels=None) -> adv_images``:
        - images: ``(B, C, H, W)`` floating point in [0,1] (un-normalized pixels).
        - labels: ``(B,)`` integer class indices, or None (untargeted only) to use the model's own
          clean predictions, computed in the same forward pass as the gradient (avoids label leaking).
        - returns: ``(B, C, H, W)`` in [0,1], detached, same dtype and device as ``images``.

    Exact bound: in exact arithmetic ``|adv - x| <= eps``; the float sum ``x + eps`` rounds, so the
    guarantee is ``|adv - x| <= eps_d + finfo(dtype).eps / 4`` elementwise, where ``eps_d`` is eps
    rounded to the image dtype (half an ulp just below 1; 2**-25 for float32). Values lie in [0,1] exactly.

    Example::

        >>> attack = FGSM(model, eps=0.85 / 255)
        >>> adv = attack(images)              # untargeted on the model's predictions
        >>> adv = attack(images, labels)      # untargeted on given labels
        >>> FGSM(model, eps=8 / 255, targeted=True)(images, target_labels)
    """

    def __init__(self, model: nn.Module, eps: float, targeted: bool = False, loss: str | LossFn = "ce") -> None:
        super().__init__(model, loss)
        self.eps = check_eps(eps, "eps")
        self.targeted = bool(targeted)

    def _repr_args(self) -> dict[str, object]:
        return {"eps": self.eps, "targeted": self.targeted, "loss": loss_name(self.loss)}

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.eps == 0.0:
            return images.detach().clone()
        _, _, grad = self._input_gradient(images, labels, self.targeted)
        return fgsm_step(images, grad.sign(), self.eps)
