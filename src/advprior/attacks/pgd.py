"""Projected gradient descent on the L-inf ball (Madry et al. 2018), untargeted or targeted."""
from __future__ import annotations

import logging

import torch
from torch import nn

from advprior.attacks.base import Attack, check_eps

log = logging.getLogger(__name__)


class PGD(Attack):
    r"""PGD from "Towards Deep Learning Models Resistant to Adversarial Attacks" (Madry et al., ICLR
    2018, https://arxiv.org/abs/1706.06083).

    Distance measure: L-inf.

    ``steps`` iterations of ``adv = clamp(x + clamp(adv + alpha * sign(d loss / d adv) - x, -eps, eps),
    0, 1)`` (batch-mean cross-entropy; negated for targeted), from ``x`` or, with ``random_start``,
    from ``clamp(x + U(-eps, eps), 0, 1)``. Same operations and random draw as ``torchattacks.PGD``, so
    with the global RNG in the same state (e.g. after the same ``torch.manual_seed``) the results are
    bit-identical.

    Args:
        model: ``nn.Module`` mapping images ``(B, C, H, W)`` in [0,1] to scores ``(B, num_classes)``.
            Run in eval mode during the attack; every submodule's mode is restored.
        eps: L-inf budget in [0,1] pixel units (no default; the paper's 0-255 values divided by 255).
            ``eps=0`` returns the images unchanged.
        alpha: step size in (0,1] pixel units (no default; commonly eps/4 or 2/255).
        steps: number of gradient steps, int >= 0 (no default).
        random_start: start from a uniform random point of the eps-ball. Default True.
        targeted: if True, ``labels`` are target classes and are required. Default False.
        generator: ``torch.Generator`` for the random start, or None for the global RNG of the images'
            device (the torchattacks draw: ``torch.empty_like(x).uniform_(-eps, eps)``). A generator on
            another device draws there and the noise is copied over. Default None.

    Call ``attack(images, labels=None) -> adv_images``:
        - images: ``(B, C, H, W)`` floating point in [0,1].
        - labels: ``(B,)`` integer class indices, or None (untargeted) for the model's predictions on
          the clean images (one extra forward when ``random_start``).
        - returns: ``(B, C, H, W)`` in [0,1], detached, same dtype and device as ``images``;
          ``|adv - x| <= eps_d + finfo(dtype).eps / 4`` elementwise (float rounding of ``x + delta``,
          see ``FGSM``).

    Example::

        >>> attack = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10)
        >>> adv = attack(images, labels)
        >>> g = torch.Generator().manual_seed(0)
        >>> adv = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, generator=g)(images)
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        alpha: float,
        steps: int,
        random_start: bool = True,
        targeted: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(model)
        self.eps = check_eps(eps, "eps")
        alpha_ok = isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 < float(alpha) <= 1.0
        if not alpha_ok:
            raise ValueError(f"alpha must be a step size in (0,1] pixel units; got {alpha!r}")
        self.alpha = float(alpha)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an int >= 0; got {steps!r}")
        self.steps = steps
        self.random_start = bool(random_start)
        self.targeted = bool(targeted)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
        self.generator = generator

    def _repr_args(self) -> dict[str, object]:
        return {
            "eps": self.eps, "alpha": self.alpha, "steps": self.steps,
            "random_start": self.random_start, "targeted": self.targeted,
        }

    def _uniform_noise(self, x: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            return torch.empty_like(x).uniform_(-self.eps, self.eps)
        noise = torch.empty(x.shape, dtype=x.dtype, device=self.generator.device)
        noise.uniform_(-self.eps, self.eps, generator=self.generator)
        return noise.to(x.device)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        images = images.detach()
        if self.eps == 0.0 or self.steps == 0 and not self.random_start:
            return images.clone()
        if labels is None and self.random_start:
            # Attack the clean prediction, not the prediction at the random start.
            with torch.no_grad():
                labels = self._forward(images).argmax(dim=1)
        adv = images.clone()
        if self.random_start:
            adv = torch.clamp(adv + self._uniform_noise(adv), min=0, max=1).detach()
        for _ in range(self.steps):
            # labels=None only when not random_start: the first step's forward is on the clean images.
            _, labels, grad = self._input_gradient(adv, labels, self.targeted)
            adv = adv.detach() + self.alpha * grad.sign()
            delta = torch.clamp(adv - images, min=-self.eps, max=self.eps)
            adv = torch.clamp(images + delta, min=0, max=1).detach()
        return adv
