"""Projected gradient descent on the L-inf ball (Madry et al. 2018), untargeted or targeted."""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from advprior.attacks.base import Attack, check_eps
from advprior.attacks.losses import LossFn, loss_name

log = logging.getLogger(__name__)

SCHEDULES = ("constant", "cosine")


class PGD(Attack):
    r"""PGD from "Towards Deep Learning Models Resistant to Adversarial Attacks" (Madry et al., ICLR
    2018, https://arxiv.org/abs/1706.06083).

    Distance measure: L-inf.

    ``steps`` iterations of ``adv = clamp(x + clamp(adv + alpha * sign(d loss / d adv) - x, -eps, eps),
    0, 1)`` (batch mean of the loss; negated for targeted), from ``x`` or, with ``random_start``, from
    ``clamp(x + U(-eps, eps), 0, 1)``. With the defaults (``loss="ce"``, ``restarts=1``) these are the
    operations and the random draw of ``torchattacks.PGD``, so with the global RNG in the same state
    (e.g. after the same ``torch.manual_seed``) the results are bit-identical.

    Restarts: ``restarts=R`` runs up to R attacks from independent random starts and keeps, per image,
    the first restart whose result succeeds (misclassified; for targeted: classified as the target),
    else the one with the highest final loss. Restart ``r`` attacks only the images no earlier restart
    has won, so restarts cost little where the attack already succeeds.

    Args:
        model: ``nn.Module`` mapping images ``(B, C, H, W)`` in [0,1] to scores ``(B, num_classes)``.
            Run in eval mode during the attack; every submodule's mode is restored.
        eps: L-inf budget in [0,1] pixel units (no default; the paper's 0-255 values divided by 255).
            ``eps=0`` returns the images unchanged.
        alpha: step size in (0,1] pixel units (no default; commonly eps/4 or 2/255). Anything else,
            zero, negative or NaN included, is refused with a ValueError.
        steps: number of gradient steps per restart, int >= 0 (no default).
        random_start: start from a uniform random point of the eps-ball. Default True.
        targeted: if True, ``labels`` are target classes and are required. Default False.
        generator: ``torch.Generator`` for the random start, or None for the global RNG of the images'
            device (the torchattacks draw: ``torch.empty_like(x).uniform_(-eps, eps)``). A generator on
            another device draws there and the noise is copied over. Default None.
        restarts: int >= 1 (> 1 needs ``random_start``). Default 1.
        schedule: ``"constant"`` (default, torchattacks) or ``"cosine"``: step t is
            ``alpha * (1 + cos(pi t / steps)) / 2``, large steps first, then fine ones (on the embedded
            default, 20 cosine steps from alpha = eps reach what 80 constant eps/4 steps with 4 restarts reach).
        early_stop: stop attacking an image at the first iterate that succeeds and keep that iterate (a
            robust-accuracy evaluation: success at any step counts, and succeeded images cost nothing
            more). Default False (the last iterate, as torchattacks).
        loss: ``"ce"`` (default), ``"margin"`` (Carlini-Wagner; the strong choice for scores whose
            cross-entropy saturates, e.g. a log posterior) or a callable, see ``advprior.attacks.losses``.

    Call ``attack(images, labels=None, seeds=None) -> adv_images``:
        - images: ``(B, C, H, W)`` floating point in [0,1].
        - labels: ``(B,)`` integer class indices, or None (untargeted) for the model's predictions on
          the clean images (one extra forward when ``random_start``).
        - seeds: optional ``(B,)`` or ``(B, m)`` integers: image b's random start in restart r is drawn on
          the CPU from a generator seeded by ``numpy.random.SeedSequence([*seeds[b], r])``, so it does not
          depend on the batch it is in, its position, the device or the number of processes (``generator``
          is then unused).
        - returns: ``(B, C, H, W)`` in [0,1], detached, same dtype and device as ``images``;
          ``|adv - x| <= eps_d + finfo(dtype).eps / 4`` elementwise (float rounding of ``x + delta``,
          see ``FGSM``).

    Example::

        >>> attack = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10)
        >>> adv = attack(images, labels)
        >>> g = torch.Generator().manual_seed(0)
        >>> adv = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, generator=g)(images)
        >>> adv = PGD(model, 8 / 255, 2 / 255, 50, restarts=3, loss="margin")(images, labels, seeds=index)
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
        restarts: int = 1,
        loss: str | LossFn = "ce",
        early_stop: bool = False,
        schedule: str = "constant",
    ) -> None:
        super().__init__(model, loss)
        self.eps = check_eps(eps, "eps")
        alpha_ok = isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 < float(alpha) <= 1.0
        if not alpha_ok:
            raise ValueError(f"alpha must be a step size in (0,1] pixel units; got {alpha!r}"
                             " (a zero or negative step would leave the images where they start)")
        self.alpha = float(alpha)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an int >= 0; got {steps!r}")
        self.steps = steps
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"restarts must be an int >= 1; got {restarts!r}")
        if restarts > 1 and not random_start:
            raise ValueError(f"restarts={restarts} needs random_start=True: without a random start every "
                             "restart is the same deterministic attack")
        self.restarts = restarts
        self.early_stop = bool(early_stop)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.schedule = schedule
        self.random_start = bool(random_start)
        self.targeted = bool(targeted)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
        self.generator = generator

    def _repr_args(self) -> dict[str, object]:
        return {
            "eps": self.eps, "alpha": self.alpha, "steps": self.steps, "restarts": self.restarts,
            "random_start": self.random_start, "targeted": self.targeted, "loss": loss_name(self.loss),
            "early_stop": self.early_stop, "schedule": self.schedule,
        }

    # -- public ------------------------------------------------------------------------------------
    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor | None = None, seeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Adversarial images; ``seeds`` (B,) or (B, m) integers (optional) make each image's random start
        a function of its own seeds and the restart number only (see the class doc)."""
        if seeds is not None:
            seeds = torch.as_tensor(seeds)
            if not self.random_start:
                raise ValueError("seeds set the random start; they need random_start=True")
            if seeds.is_floating_point() or seeds.ndim not in (1, 2) or seeds.shape[0] != images.shape[0]:
                raise ValueError(f"seeds must be an integer tensor of shape (B,) or (B, m) with B={images.shape[0]};"
                                 f" got {seeds.dtype} {tuple(seeds.shape)}")
            seeds = seeds.reshape(seeds.shape[0], -1).cpu()
        with self._attack_context(images, labels) as (images, labels):
            adv = self._run(images, labels, seeds)
        return adv.detach()

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self._run(images, labels, None)

    # -- internals ---------------------------------------------------------------------------------
    def _start_noise(self, x: torch.Tensor, restart: int, seeds: torch.Tensor | None) -> torch.Tensor:
        """``U(-eps, eps)`` noise shaped like ``x``: from ``seeds`` per image (drawn on the CPU, so the same on
        every device and whatever the batch), else from ``generator`` or the global RNG (torchattacks' draw)."""
        if seeds is not None:
            noise = torch.empty(x.shape, dtype=x.dtype)
            for b, row in enumerate(seeds.tolist()):
                state = np.random.SeedSequence([*row, restart]).generate_state(2, np.uint32)
                g = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
                noise[b].uniform_(-self.eps, self.eps, generator=g)
            return noise.to(x.device)
        if self.generator is None:
            return torch.empty_like(x).uniform_(-self.eps, self.eps)
        noise = torch.empty(x.shape, dtype=x.dtype, device=self.generator.device)
        noise.uniform_(-self.eps, self.eps, generator=self.generator)
        return noise.to(x.device)

    def _run(self, images: torch.Tensor, labels: torch.Tensor | None, seeds: torch.Tensor | None) -> torch.Tensor:
        images = images.detach()
        if self.eps == 0.0 or self.steps == 0 and not self.random_start:
            return images.clone()
        if labels is None and (self.random_start or self.early_stop):
            # Attack the clean prediction, not the prediction at the random start.
            with torch.no_grad():
                labels = self._scores(images).argmax(dim=1)
        if self.restarts == 1:
            noise = self._start_noise(images, 0, seeds) if self.random_start else None
            return self._descend(images, labels, noise)
        best = images.clone()
        best_loss = torch.full((images.shape[0],), float("-inf"), dtype=torch.float64, device=images.device)
        todo = torch.arange(images.shape[0], device=images.device)
        for r in range(self.restarts):
            noise = self._start_noise(images, r, seeds)[todo]
            adv = self._descend(images[todo], labels[todo], noise)
            with torch.no_grad():
                scores, _, loss = self._objective(adv, labels[todo], self.targeted, reduction="none")
            pred = scores.argmax(1)
            success = pred == labels[todo] if self.targeted else pred != labels[todo]
            # Keep the first successful restart; until then, the one with the highest loss.
            keep = success | (loss.double() > best_loss[todo])
            best[todo[keep]] = adv[keep]
            best_loss[todo[keep]] = loss.double()[keep]
            todo = todo[~success]
            if todo.numel() == 0:
                break
        return best

    def step_size(self, t: int) -> float:
        """The step size of step ``t`` (0-based): ``alpha``, or ``alpha * (1 + cos(pi t / steps)) / 2``."""
        if self.schedule == "constant":
            return self.alpha
        return self.alpha * 0.5 * (1.0 + math.cos(math.pi * t / self.steps))

    def _descend(self, images: torch.Tensor, labels: torch.Tensor | None, noise: torch.Tensor | None) -> torch.Tensor:
        """One PGD run from ``images + noise`` (or from ``images`` when ``noise`` is None)."""
        adv = images.clone()
        if noise is not None:
            adv = torch.clamp(adv + noise, min=0, max=1).detach()
        if self.early_stop:
            return self._descend_until_success(images, labels, adv)
        for t in range(self.steps):
            # labels=None only when not random_start: the first step's forward is on the clean images.
            _, labels, grad = self._input_gradient(adv, labels, self.targeted)
            adv = adv.detach() + self.step_size(t) * grad.sign()
            delta = torch.clamp(adv - images, min=-self.eps, max=self.eps)
            adv = torch.clamp(images + delta, min=0, max=1).detach()
        return adv

    def _descend_until_success(self, images: torch.Tensor, labels: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """PGD from ``adv`` where an image leaves the batch at the first iterate that succeeds (that iterate
        is kept); the success test reuses each step's forward pass, so it costs nothing extra."""
        active = torch.arange(images.shape[0], device=images.device)
        for t in range(self.steps):
            scores, _, grad = self._input_gradient(adv[active], labels[active], self.targeted)
            pred = scores.argmax(1)
            going = pred != labels[active] if self.targeted else pred == labels[active]
            active, grad = active[going], grad[going]
            if active.numel() == 0:
                break
            x0 = images[active]
            step = adv[active] + self.step_size(t) * grad.sign()
            adv[active] = torch.clamp(x0 + torch.clamp(step - x0, min=-self.eps, max=self.eps), min=0, max=1)
        return adv.detach()
