"""Base class shared by every attack: input checks, eval mode with exact restore, input gradients.

Design follows torchattacks (``Attack(model)``; subclasses implement ``forward(images, labels)``;
``attack(images, labels)`` returns adversarial images) with stricter contracts:

- images must be floating point in [0,1] pixel space; normalization belongs inside the model;
- the model runs in eval mode during the attack and every submodule's ``training`` flag is restored
  afterwards, also when an exception is raised (torchattacks only restores ``model.train()``);
- gradients are taken with ``torch.autograd.grad`` w.r.t. the input only, so nothing accumulates in
  ``param.grad`` and no ``requires_grad`` flag of the model is touched (the autograd engine also skips
  the weight-gradient kernels, since no parameter gradient is requested);
- outputs are detached and keep the dtype and device of the input images; images of another floating
  dtype than the model's parameters (float16/float64 images, float32 model) are cast for the model's
  forward pass only (``_forward``), so the perturbation is applied, and its L-inf bound holds, in the
  images' own dtype;
- a model that returns NaN or +inf scores, or a NaN input gradient, raises ValueError instead of
  returning meaningless images.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from advprior.attacks.losses import LossFn, loss_name, resolve_loss

log = logging.getLogger(__name__)


def check_eps(eps: object, name: str = "eps") -> float:
    """``eps`` as a Python float in [0,1] (pixel units), else ValueError naming it."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        if isinstance(eps, torch.Tensor) and eps.numel() == 1 and eps.is_floating_point():
            eps = eps.item()
        else:
            raise ValueError(f"{name} must be a number in [0,1] (pixel units); got {eps!r}")
    eps = float(eps)
    if not (0.0 <= eps <= 1.0):  # also rejects NaN
        hint = " (on the 0-255 scale? divide by 255)" if 1.0 < eps <= 255.0 else ""
        raise ValueError(f"{name} must be in [0,1] (pixel units); got {eps}{hint}")
    return eps


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode; restore every submodule's own ``training`` flag on exit (also on error)."""
    # Flags are restored by assignment: model.train(flag) would recurse and overwrite mixed modes.
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def fgsm_step(images: torch.Tensor, grad_sign: torch.Tensor, eps: float) -> torch.Tensor:
    """``clamp(images + eps * grad_sign, 0, 1)``, the exact expression torchattacks uses (bit-identical).

    ``eps == 0`` returns a copy of ``images`` (also where the gradient is NaN).
    """
    if eps == 0.0:
        return images.detach().clone()
    return torch.clamp(images + eps * grad_sign, min=0, max=1).detach()


class Attack:
    """Base class: ``attack(images, labels=None) -> adv_images``; subclasses implement ``forward``.

    Args:
        model: any ``nn.Module`` mapping images ``(B, C, H, W)`` in [0,1] to scores ``(B, num_classes)``
            (logits, log-posteriors, or unnormalized joint scores).
        loss: ``"ce"`` (cross-entropy, default, bit-identical to torchattacks), ``"margin"``
            (``max_{j != y} s_j - s_y``, Carlini-Wagner) or a callable ``(scores, labels, reduction)``;
            see ``advprior.attacks.losses``.

    ``__call__`` validates the inputs, runs ``forward`` with the model in eval mode and gradients
    enabled (also when called under ``torch.no_grad()`` / ``torch.inference_mode()``), restores every
    submodule's train/eval flag, and returns the detached result.
    """

    #: Subclasses that need labels in ``forward`` regardless of ``labels=None`` set this per instance.
    targeted: bool = False

    def __init__(self, model: nn.Module, loss: str | LossFn = "ce") -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.loss = resolve_loss(loss)

    # -- to override -------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Adversarial images for validated ``images`` and ``labels`` (None: use model predictions)."""
        raise NotImplementedError

    # -- public ------------------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        with self._attack_context(images, labels) as (images, labels):
            adv = self.forward(images, labels)
        return adv.detach()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._repr_args().items())
        return f"{type(self).__name__}({args})"

    def _repr_args(self) -> dict[str, object]:
        return {"targeted": self.targeted, "loss": loss_name(self.loss)}

    # -- helpers for subclasses --------------------------------------------------------------------
    @contextmanager
    def _attack_context(
        self, images: torch.Tensor, labels: torch.Tensor | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Validate inputs, then eval mode + grad mode for the duration; yields (images, labels)."""
        images, labels = self._check_inputs(images, labels)
        with eval_mode(self.model), torch.inference_mode(False), torch.enable_grad():
            if images.is_inference():  # inference tensors cannot enter autograd; a copy can
                images = images.clone()
            yield images, labels

    def _check_inputs(
        self, images: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor of shape (B, C, H, W); got {type(images).__name__}")
        if not images.is_floating_point():
            raise ValueError(
                f"images must be a floating point tensor in [0,1] pixel space; got dtype {images.dtype}"
                " (convert uint8 images with images.float() / 255)"
            )
        if images.ndim == 3:
            raise ValueError(
                f"images must be a batch (B, C, H, W); got shape {tuple(images.shape)}, a single (C, H, W) image?"
                " Add the batch dimension: images.unsqueeze(0) (and labels as a (1,) tensor)"
            )
        if images.ndim < 2 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty batch (B, C, H, W); got shape {tuple(images.shape)}")
        lo, hi = torch.aminmax(images.detach())
        lo, hi = float(lo), float(hi)
        if not (lo >= 0.0 and hi <= 1.0):  # NaN fails both comparisons
            raise ValueError(
                f"images must be in [0,1] pixel space; got min {lo:.4g} max {hi:.4g}"
                " — did you pass normalized images? normalization belongs inside the model"
            )
        param = next(self.model.parameters(), None)
        if param is not None and param.device != images.device:
            raise ValueError(
                f"images are on {images.device} but the model is on {param.device}; move one to the other"
            )
        if labels is None:
            if self.targeted:
                raise ValueError("labels are required when targeted=True (they are the target classes); got None")
            return images, None
        if not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer class-index tensor of shape (B,); got dtype {labels.dtype}")
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape (B,) = ({images.shape[0]},) to match images; got {tuple(labels.shape)}"
            )
        return images, labels.detach().to(device=images.device, dtype=torch.long)

    def _input_gradient(
        self, x: torch.Tensor, labels: torch.Tensor | None, targeted: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward + backward: ``(scores (B, K) detached, labels used (B,), d loss / d x (B, C, H, W))``.

        ``labels=None`` uses the argmax of these same scores (the clean predictions when ``x`` is clean).
        The loss is ``_objective``'s. Must run inside ``_attack_context``.
        """
        x = x.detach().requires_grad_(True)
        scores, labels, loss = self._objective(x, labels, targeted)
        (grad,) = torch.autograd.grad(loss, x)
        if bool(torch.isnan(grad).any()):
            raise ValueError(
                "the loss gradient with respect to the images holds NaN (the model's scores are finite); the "
                "model has an operation without a gradient at these inputs (e.g. sqrt or log at 0)"
            )
        return scores.detach(), labels, grad

    def _objective(
        self, x: torch.Tensor, labels: torch.Tensor | None, targeted: bool, reduction: str = "mean"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(scores (B, K), labels used (B,), loss)``: ``self.loss`` of the model's scores on the labels
        (batch mean as torchattacks, or per image with ``reduction="none"``), negated when ``targeted``.
        Subclasses with another objective override this."""
        scores = self._scores(x)
        if labels is None:
            labels = scores.detach().argmax(dim=1)
        else:
            self._check_label_range(labels, scores.shape[1])
        loss = self.loss(scores, labels, reduction=reduction)
        if targeted:
            loss = -loss  # same expression as torchattacks, so the gradient bits match
        return scores, labels, loss

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        """The model's scores for ``x``, checked to be ``(B, num_classes)`` and free of NaN and +inf."""
        scores = self._forward(x)
        if not isinstance(scores, torch.Tensor) or scores.ndim != 2 or scores.shape[0] != x.shape[0]:
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"model must return scores of shape (B, num_classes) = ({x.shape[0]}, K); got {shape}")
        bad = ~(scores.detach() < float("inf"))  # NaN or +inf; -inf is a valid score (an excluded class)
        if bool(bad.any()):
            rows = torch.nonzero(bad.any(dim=1)).flatten().tolist()
            raise ValueError(
                f"model returned NaN or +inf scores for {len(rows)} of {x.shape[0]} images (first: {rows[:5]}); "
                "the attack's gradient would be meaningless. Check the model's weights (diverged training?), "
                "its precision (float16 overflow?) and its input"
            )
        return scores

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's scores for ``x``, cast to the model's floating dtype if it differs (autograd flows
        back through the cast, so gradients come in ``x``'s dtype)."""
        param = next(self.model.parameters(), None)
        if param is not None and param.is_floating_point() and param.dtype != x.dtype:
            x = x.to(param.dtype)
        return self.model(x)

    @staticmethod
    def _check_label_range(labels: torch.Tensor, num_classes: int) -> None:
        lo, hi = torch.aminmax(labels)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"labels must be class indices in [0, {num_classes - 1}] for this model; got min {lo} max {hi}"
            )

