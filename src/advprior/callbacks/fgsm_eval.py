"""``FGSMEvalCallback``: FGSM robustness of the model being trained, on a fixed validation subset, per epoch."""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from advprior.analysis.rates import format_eps
from advprior.attacks.sweep import FGSMSweep

log = logging.getLogger(__name__)

METRICS_PER_EPS: tuple[str, ...] = ("adv_acc", "label_changed_rate", "high_conf_rate")
"""Per-eps metric names, logged as ``{prefix}/{name}/eps={e}/{metric}``."""


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


class FGSMEvalCallback(pl.Callback):
    """Runs ``FGSMSweep`` on a fixed validation subset at the end of validation epochs and logs the rates.

    The subset is the first ``num_images`` items of the validation dataset (``trainer.val_dataloaders``,
    else ``trainer.datamodule.val_dataloader()``), read by index from ``loader.dataset`` (not through the
    loader: no sampler, shuffling, DDP sharding or ``limit_val_batches``), collected once and cached on
    CPU (``subset_images`` ``(N, C, H, W)`` in [0,1], ``subset_labels`` ``(N,)``, ``subset_indices``
    ``(N,)``; or call ``set_subset(dataset)`` yourself). Each batch of ``batch_size`` is moved to
    ``pl_module.device`` when evaluated, so only one batch occupies the accelerator.

    The attacked model is ``pl_module.model`` when it is an ``nn.Module`` (``ClassifierModule`` keeps the
    ``Classifier`` there), else ``pl_module``. The sweep runs it in eval mode and restores every
    submodule's train/eval flag; gradients are taken w.r.t. the input only (``torch.autograd.grad``), so
    no parameter's ``.grad`` changes. Autograd is switched back on inside the hook
    (``torch.inference_mode(False)`` + ``torch.enable_grad()``): fit's validation runs under ``no_grad``,
    ``trainer.validate`` under inference mode.

    Logged with ``pl_module.log(on_step=False, on_epoch=True, sync_dist=True)`` from
    ``on_validation_epoch_end`` (so they reach ``trainer.callback_metrics``, the ``validate`` results and
    every logger, at the trainer's global step, like the module's epoch-level val metrics);
    ``name`` = ``pl_module.name`` (else ``"model"``), ``e`` = ``format_eps(eps / scale)`` (eps in [0,1]
    pixel units, 4 significant digits); all values are fractions in [0,1] of the N images:

    - ``{prefix}/{name}/clean_acc``: clean top-1 accuracy;
    - ``{prefix}/{name}/eps={e}/adv_acc``: top-1 accuracy on the FGSM images;
    - ``{prefix}/{name}/eps={e}/label_changed_rate``: adversarial top-1 != clean top-1;
    - ``{prefix}/{name}/eps={e}/high_conf_rate``: label changed and adversarial top-1 softmax
      probability > ``high_conf_threshold`` (the paper's high-confidence adversarial examples).

    The last values are also kept in ``last_metrics`` (same keys; ``last_epoch`` is the epoch).

    DDP: every rank evaluates the same subset (the dataset is indexed directly, so each rank has all N
    images) and gets the same values; every rank therefore logs the same keys in the same order, so the
    ``sync_dist`` mean-reduction cannot deadlock and all ranks agree on the value (which checkpoint or
    early-stopping monitors need). The attack is redundant across ranks but costs one forward+backward
    and K forwards of N images. ``pl_module.model`` is the module inside the DDP wrapper, so the attack
    triggers no DDP gradient hooks or collectives.

    Args:
        epsilons: non-empty sequence of budgets on the ``scale`` scale (0-255 by default: the paper's
            0.85 is ``0.85``); each ``eps / scale`` must lie in [0,1] and give a distinct metric name.
        scale: divisor mapping ``epsilons`` to [0,1] pixel units (255.0; 1.0 if already in [0,1]).
        num_images: N, the size of the fixed subset (> 0; the whole dataset if it is smaller).
        batch_size: images per attack batch (> 0).
        every_n_epochs: evaluate when ``(current_epoch + 1) % every_n_epochs == 0`` during ``fit``
            (every time under ``trainer.validate``, and at each validation of a matching epoch with
            ``val_check_interval < 1``); never during the sanity check.
        prefix: first component of the metric names (non-empty, no ``/`` at either end).
        high_conf_threshold: probability in [0,1] for ``high_conf_rate``.
        use_true_labels: attack the true labels (default, as the attack stage) or, if False, the model's
            own clean predictions.
        dataloader_idx: which validation dataloader when there are several (0).
    """

    def __init__(
        self,
        epsilons: Sequence[float],
        scale: float = 255.0,
        num_images: int = 256,
        batch_size: int = 128,
        every_n_epochs: int = 1,
        prefix: str = "val_attack",
        high_conf_threshold: float = 0.5,
        use_true_labels: bool = True,
        dataloader_idx: int = 0,
    ) -> None:
        super().__init__()
        if not _is_number(scale) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0 (255.0 for 0-255 epsilons); got {scale!r}")
        self.scale = float(scale)
        if isinstance(epsilons, torch.Tensor):
            epsilons = epsilons.tolist()
        if isinstance(epsilons, (str, bytes)) or not isinstance(epsilons, Sequence) or len(epsilons) == 0:
            raise ValueError(
                f"epsilons must be a non-empty sequence of numbers on the 0-{scale:g} scale; got {epsilons!r}"
            )
        eps01: list[float] = []
        for i, e in enumerate(epsilons):
            if not _is_number(e) or not 0.0 <= float(e) / self.scale <= 1.0:  # NaN fails too
                raise ValueError(
                    f"epsilons[{i}] must be a number in [0, {self.scale:g}] (eps/scale in [0,1] pixel units);"
                    f" got {e!r}"
                )
            eps01.append(float(e) / self.scale)
        names = [format_eps(e) for e in eps01]
        if len(set(names)) != len(names):
            raise ValueError(
                f"epsilons must give distinct metric names (4 significant digits of eps/scale); got {names}"
            )
        self.epsilons: list[float] = eps01
        self.eps_names: list[str] = names
        self.num_images = _positive_int(num_images, "num_images")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.every_n_epochs = _positive_int(every_n_epochs, "every_n_epochs")
        if not isinstance(prefix, str) or not prefix.strip("/") or prefix != prefix.strip("/"):
            raise ValueError(f"prefix must be a non-empty string without leading/trailing '/'; got {prefix!r}")
        self.prefix = prefix
        if not _is_number(high_conf_threshold) or not 0.0 <= float(high_conf_threshold) <= 1.0:
            raise ValueError(f"high_conf_threshold must be a probability in [0,1]; got {high_conf_threshold!r}")
        self.high_conf_threshold = float(high_conf_threshold)
        self.use_true_labels = bool(use_true_labels)
        if isinstance(dataloader_idx, bool) or not isinstance(dataloader_idx, int) or dataloader_idx < 0:
            raise ValueError(f"dataloader_idx must be an int >= 0; got {dataloader_idx!r}")
        self.dataloader_idx = dataloader_idx
        self.subset_images: torch.Tensor | None = None
        self.subset_labels: torch.Tensor | None = None
        self.subset_indices: torch.Tensor | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_epoch: int | None = None

    # -- the fixed subset --------------------------------------------------------------------------
    def set_subset(self, dataset: Dataset) -> None:
        """Cache the first ``num_images`` items of ``dataset`` (``(image, label[, index])`` tuples) on CPU."""
        if isinstance(dataset, IterableDataset):
            items = list(itertools.islice(iter(dataset), self.num_images))
        else:
            n = min(self.num_images, len(dataset))
            items = [dataset[i] for i in range(n)]
        if not items:
            raise ValueError("dataset is empty: FGSMEvalCallback needs at least one validation image")
        if len(items) < self.num_images:
            log.warning("FGSMEvalCallback: validation set has %d images < num_images=%d; using all",
                        len(items), self.num_images)
        if not isinstance(items[0], (tuple, list)) or len(items[0]) < 2:
            raise ValueError(f"dataset items must be (image, label[, index]) tuples; got {type(items[0]).__name__}")
        # Built outside inference mode: inference tensors could not be cloned into autograd later.
        with torch.inference_mode(False):
            self.subset_images = torch.stack([torch.as_tensor(it[0]) for it in items]).detach().cpu().clone()
            self.subset_labels = torch.as_tensor([int(it[1]) for it in items], dtype=torch.long)
            self.subset_indices = torch.as_tensor(
                [int(it[2]) if len(it) > 2 else i for i, it in enumerate(items)], dtype=torch.long
            )
        if not self.subset_images.is_floating_point():
            raise ValueError(f"validation images must be floating point in [0,1]; got dtype {self.subset_images.dtype}")

    def _val_dataset(self, trainer: pl.Trainer) -> Dataset:
        loaders = getattr(trainer, "val_dataloaders", None)
        if loaders is None and getattr(trainer, "datamodule", None) is not None:
            loaders = trainer.datamodule.val_dataloader()
        if isinstance(loaders, dict):
            loaders = list(loaders.values())
        if isinstance(loaders, (list, tuple)):
            if self.dataloader_idx >= len(loaders):
                raise ValueError(f"dataloader_idx={self.dataloader_idx} but there are {len(loaders)} val dataloaders")
            loaders = loaders[self.dataloader_idx]
        if not isinstance(loaders, DataLoader):
            raise ValueError(f"FGSMEvalCallback needs a validation DataLoader; found {type(loaders).__name__}")
        return loaders.dataset

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(
        self, model: nn.Module, device: torch.device | str | None = None, name: str = "model"
    ) -> dict[str, float]:
        """Metrics (keys as logged, for ``name``) of ``model`` on the cached subset; see the class doc.

        ``device``: where to run (default: the device of the model's first parameter, else CPU). Restores
        the model's train/eval flags and leaves parameter gradients untouched.
        """
        if self.subset_images is None:
            raise ValueError("no validation subset cached: call set_subset(dataset) first (the hook does it)")
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        sweep = FGSMSweep(model, self.epsilons)
        k = len(self.epsilons)
        n = int(self.subset_labels.shape[0])
        # trainer.validate runs hooks under inference mode (fit's validation under no_grad): the input
        # gradient needs autograd, and every tensor updated in place here must be created outside it.
        with torch.inference_mode(False), torch.enable_grad():
            clean_correct = 0
            adv_correct = torch.zeros(k, dtype=torch.long)
            changed = torch.zeros(k, dtype=torch.long)
            high_conf = torch.zeros(k, dtype=torch.long)
            for start in range(0, n, self.batch_size):
                x = self.subset_images[start:start + self.batch_size].to(device).clone()
                y = self.subset_labels[start:start + self.batch_size].to(device).clone()
                res = sweep.sweep(x, y if self.use_true_labels else None)
                clean_pred = res.clean_logits.argmax(dim=1)
                # float64 softmax, as the outcome tables (advprior.analysis.outcomes)
                prob, adv_pred = res.adv_logits.double().softmax(dim=-1).max(dim=-1)  # (K, B)
                flipped = adv_pred != clean_pred
                clean_correct += int((clean_pred == y).sum())
                adv_correct += (adv_pred == y).sum(dim=1).cpu()
                changed += flipped.sum(dim=1).cpu()
                high_conf += (flipped & (prob > self.high_conf_threshold)).sum(dim=1).cpu()
        base = f"{self.prefix}/{name}"
        out = {f"{base}/clean_acc": clean_correct / n}
        for i, e in enumerate(self.eps_names):
            for metric, counts in zip(METRICS_PER_EPS, (adv_correct, changed, high_conf)):
                out[f"{base}/eps={e}/{metric}"] = int(counts[i]) / n
        return out

    # -- Lightning hook ----------------------------------------------------------------------------
    def _should_run(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_run(trainer):
            return
        if self.subset_images is None:
            self.set_subset(self._val_dataset(trainer))
        model = getattr(pl_module, "model", None)
        if not isinstance(model, nn.Module):
            model = pl_module
        name = getattr(pl_module, "name", None)
        name = name if isinstance(name, str) and name else "model"
        metrics = self.evaluate(model, pl_module.device, name)
        self.last_metrics, self.last_epoch = metrics, trainer.current_epoch
        n = int(self.subset_labels.shape[0])
        for key, value in metrics.items():
            # Same keys on every rank (identical values), so sync_dist's all-reduce always matches up.
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=True, batch_size=n,
                          add_dataloader_idx=False)
        log.info("FGSMEvalCallback epoch %d: %s", trainer.current_epoch,
                 ", ".join(f"{k.rsplit('/', 2)[-2]}:{v:.3f}" for k, v in metrics.items() if k.endswith("adv_acc")))
