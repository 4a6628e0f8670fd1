"""Per-class autoencoders (paper sec. 6: 128 -> 64 -> 32 -> 16 -> 8, leaky ReLU 0.33, Adam, l2 loss),
all classes held in one module with a class dimension on every weight and trained together.

Activation placement (our reading of "leaky relu between each layer"): LeakyReLU after every linear layer
except the code layer (last encoder layer) and the output layer (last decoder layer). The code stays linear
so the KDE sees an unsquashed 8-d embedding; the output stays linear because it reconstructs signed PCA
coefficients. ``activate_code=True`` puts a LeakyReLU on the code as well.

Loss scaling: the objective optimized is ``sum_c MSE_c`` (each class's own mean squared error over its batch
rows and dims). Class ``c``'s parameters then receive exactly the gradient of its own MSE, so one batched Adam
step is identical to one Adam step of each independent per-class model with the same ``lr``, ``eps`` and
``weight_decay``. (Minimizing the mean over classes instead would scale gradients by ``1/C``; Adam is
invariant to that except through ``eps``, which would act like ``C * eps`` per class.) What is logged as
``prior/ae_recon_loss`` is the mean over classes, ``sum_c MSE_c / C``, comparable across class counts.
"""
from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

log = logging.getLogger(__name__)


def layer_widths(in_dim: int, bottleneck: int, depth: int | None = None) -> list[int]:
    """Encoder widths: halve ``in_dim`` while the half stays above ``bottleneck`` (at most ``depth`` halvings),
    then one linear layer to ``bottleneck``. ``layer_widths(128, 8) == [128, 64, 32, 16, 8]``;
    ``layer_widths(128, 8, depth=2) == [128, 64, 32, 8]``."""
    widths = [in_dim]
    w = in_dim
    while w // 2 > bottleneck and (depth is None or len(widths) - 1 < depth):
        w //= 2
        widths.append(w)
    if widths[-1] != bottleneck:
        widths.append(bottleneck)
    return widths


class BatchedAutoencoder(nn.Module):
    """``num_classes`` independent MLP autoencoders evaluated in one batched pass.

    Parameters ``enc_weight[i]`` (C, out, in), ``enc_bias[i]`` (C, out), same for ``dec_*``; layer ``i`` of
    class ``c`` computes ``x @ W[c].T + b[c]`` like ``nn.Linear``. Inputs carry the class dimension first:
    ``encode(x (C', B, in_dim)) -> (C', B, bottleneck)``; ``C' = C`` by default, or any ``classes`` (C',)
    index tensor picks which class's weights each leading slice uses (e.g. a top-K shortlist).
    Initialization matches ``nn.Linear`` per class: weights and biases ~ U(-1/sqrt(in), 1/sqrt(in)) (what
    ``kaiming_uniform_(a=sqrt(5))`` gives), drawn from a generator seeded with ``seed``.
    """

    def __init__(
        self,
        num_classes: int,
        in_dim: int = 128,
        bottleneck: int = 8,
        depth: int | None = None,
        negative_slope: float = 0.33,
        activate_code: bool = False,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        for name, v in (("num_classes", num_classes), ("in_dim", in_dim), ("bottleneck", bottleneck)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if bottleneck > in_dim:
            raise ValueError(f"bottleneck must be <= in_dim={in_dim}, got {bottleneck}")
        if depth is not None and (not isinstance(depth, int) or depth < 0):
            raise ValueError(f"depth must be None or an int >= 0, got {depth!r}")
        if not negative_slope >= 0:
            raise ValueError(f"negative_slope must be >= 0, got {negative_slope!r}")
        self.num_classes = num_classes
        self.in_dim = in_dim
        self.bottleneck = bottleneck
        self.depth = depth
        self.negative_slope = float(negative_slope)
        self.activate_code = bool(activate_code)
        self.widths = layer_widths(in_dim, bottleneck, depth)
        enc = list(zip(self.widths[:-1], self.widths[1:]))
        dec = [(o, i) for i, o in reversed(enc)]
        self.enc_weight = nn.ParameterList([nn.Parameter(torch.empty(num_classes, o, i)) for i, o in enc])
        self.enc_bias = nn.ParameterList([nn.Parameter(torch.empty(num_classes, o)) for i, o in enc])
        self.dec_weight = nn.ParameterList([nn.Parameter(torch.empty(num_classes, o, i)) for i, o in dec])
        self.dec_bias = nn.ParameterList([nn.Parameter(torch.empty(num_classes, o)) for i, o in dec])
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = 0) -> None:
        """nn.Linear's init per class: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        for W, b in self._layers():
            bound = 1.0 / math.sqrt(W.shape[2])
            W.copy_(torch.rand(W.shape, generator=gen, dtype=W.dtype).mul_(2 * bound).sub_(bound))
            b.copy_(torch.rand(b.shape, generator=gen, dtype=b.dtype).mul_(2 * bound).sub_(bound))

    def _layers(self) -> Iterator[tuple[nn.Parameter, nn.Parameter]]:
        yield from zip(self.enc_weight, self.enc_bias)
        yield from zip(self.dec_weight, self.dec_bias)

    @staticmethod
    def _run_stack(x, weights, biases, activate_last, slope, classes):  # noqa: ANN001, ANN205
        n = len(weights)
        for i, (W, b) in enumerate(zip(weights, biases)):
            if classes is not None:
                W, b = W[classes], b[classes]
            x = torch.baddbmm(b.unsqueeze(1), x, W.transpose(1, 2))
            if i < n - 1 or activate_last:
                x = nn.functional.leaky_relu(x, slope)
        return x

    def _check(self, x: torch.Tensor, dim: int, classes: torch.Tensor | None) -> torch.Tensor | None:
        lead = self.num_classes if classes is None else None
        if classes is not None:
            classes = torch.as_tensor(classes, dtype=torch.long, device=x.device)
            if classes.ndim != 1:
                raise ValueError(f"classes must be a 1-d index tensor, got shape {tuple(classes.shape)}")
            lead = classes.shape[0]
        if x.ndim != 3 or x.shape[0] != lead or x.shape[2] != dim:
            raise ValueError(f"input must be ({lead}, B, {dim}) (class dimension first), got {tuple(x.shape)}")
        return classes

    def encode(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """(C', B, in_dim) -> codes (C', B, bottleneck)."""
        classes = self._check(x, self.in_dim, classes)
        return self._run_stack(
            x, self.enc_weight, self.enc_bias, self.activate_code, self.negative_slope, classes
        )

    def encode_from_preactivation(self, h0: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Finish encoding from the first layer's pre-activation ``h0`` (C', B, widths[1]) (= ``x @ W0.T + b0``);
        lets a caller fold a linear map (the PCA projection) into layer 0."""
        weights, biases = list(self.enc_weight), list(self.enc_bias)
        if len(weights) == 1:
            return nn.functional.leaky_relu(h0, self.negative_slope) if self.activate_code else h0
        if classes is not None:
            classes = torch.as_tensor(classes, dtype=torch.long, device=h0.device)
        h = nn.functional.leaky_relu(h0, self.negative_slope)
        return self._run_stack(h, weights[1:], biases[1:], self.activate_code, self.negative_slope, classes)

    def decode(self, z: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """(C', B, bottleneck) -> reconstructions (C', B, in_dim); the output layer is linear."""
        classes = self._check(z, self.bottleneck, classes)
        return self._run_stack(z, self.dec_weight, self.dec_bias, False, self.negative_slope, classes)

    def forward(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction ``decode(encode(x))``: (C', B, in_dim) -> (C', B, in_dim)."""
        return self.decode(self.encode(x, classes), classes)

    # ------------------------------------------------------------ per-class nn.Sequential round trip
    def to_modules(self) -> list[nn.Sequential]:
        """One ``nn.Sequential`` per class (encoder layers then decoder layers, same weights, copies)."""
        mods = []
        n_enc = len(self.enc_weight)
        for c in range(self.num_classes):
            layers: list[nn.Module] = []
            for j, (W, b) in enumerate(self._layers()):
                lin = nn.Linear(W.shape[2], W.shape[1], dtype=W.dtype, device=W.device)
                with torch.no_grad():
                    lin.weight.copy_(W[c])
                    lin.bias.copy_(b[c])
                layers.append(lin)
                last_enc, last = j == n_enc - 1, j == 2 * n_enc - 1
                if not last and (not last_enc or self.activate_code):
                    layers.append(nn.LeakyReLU(self.negative_slope))
            mods.append(nn.Sequential(*layers))
        return mods

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Sequential]) -> "BatchedAutoencoder":
        """Stack per-class ``nn.Sequential`` autoencoders (the layout ``to_modules`` writes) into one module."""
        if not modules:
            raise ValueError("modules must be a non-empty sequence of nn.Sequential autoencoders")
        linears = [[m for m in seq if isinstance(m, nn.Linear)] for seq in modules]
        acts = [[m for m in seq if isinstance(m, nn.LeakyReLU)] for seq in modules]
        first = linears[0]
        if len(first) < 2 or len(first) % 2:
            raise ValueError(f"expected an even number (>= 2) of nn.Linear layers, got {len(first)}")
        n_enc = len(first) // 2
        in_dim, bottleneck = first[0].in_features, first[n_enc - 1].out_features
        slope = acts[0][0].negative_slope if acts[0] else 0.33
        activate_code = len(acts[0]) == 2 * n_enc - 1
        widths = [first[0].in_features] + [lin.out_features for lin in first[:n_enc]]
        depth = None if widths == layer_widths(in_dim, bottleneck) else len(widths) - 2
        out = cls(len(modules), in_dim, bottleneck, depth, slope, activate_code, seed=None)
        if out.widths != widths:
            raise ValueError(f"layer widths {widths} are not a halving stack; expected e.g. {out.widths}")
        for c, (lins, seq) in enumerate(zip(linears, modules)):
            shapes = [tuple(lin.weight.shape) for lin in lins]
            if shapes != [tuple(lin.weight.shape) for lin in first]:
                raise ValueError(f"module {c} has layer shapes {shapes}, module 0 has a different stack")
            with torch.no_grad():
                for (W, b), lin in zip(out._layers(), lins):
                    W[c].copy_(lin.weight)
                    b[c].copy_(lin.bias)
        return out

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, widths={self.widths}, negative_slope={self.negative_slope}, "
            f"activate_code={self.activate_code}"
        )


def masked_class_mse(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-class mean squared error (C,) over batch rows (and dims); ``mask`` (C, B) marks real rows."""
    sq = (recon - target).pow(2).mean(-1)  # (C, B)
    if mask is None:
        return sq.mean(-1)
    m = mask.to(sq.dtype)
    return (sq * m).sum(-1) / m.sum(-1).clamp_min(1)


class ClassBalancedBatches(torch.utils.data.IterableDataset):
    """Yields ``(C, B, d)`` batches: every class contributes ``B`` of its own support points per step.

    ``codes`` (C, n_max, d) padded, ``counts`` (C,). Each epoch draws one random permutation per class (batched
    argsort of random keys, padding sorted last); step ``t`` takes positions ``t*B ... t*B+B-1`` modulo the
    class's count, so classes with fewer points cycle through theirs again and every batch row is real.
    An epoch is ``ceil(n_max / B)`` steps (every point of every class is seen at least once). Epoch ``e`` is
    seeded with ``seed + e``.
    """

    def __init__(self, codes: torch.Tensor, counts: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.codes, self.counts = codes, counts.to(device=codes.device, dtype=torch.long)
        if (self.counts < 1).any():
            raise ValueError(f"every class needs >= 1 support point; counts={self.counts.tolist()[:20]}...")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(self.codes.shape[1] / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        C, n_max, _ = self.codes.shape
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        keys = torch.rand(C, n_max, generator=gen).to(self.codes.device)
        arange = torch.arange(n_max, device=self.codes.device)
        keys = keys.masked_fill(arange[None, :] >= self.counts[:, None], 2.0)
        perm = keys.argsort(-1)  # (C, n_max): each class's valid positions first, in random order
        for t in range(len(self)):
            pos = (t * self.batch_size + torch.arange(self.batch_size, device=perm.device))[None, :]
            idx = torch.gather(perm, 1, pos % self.counts[:, None])  # (C, B)
            yield torch.gather(self.codes, 1, idx[..., None].expand(-1, -1, self.codes.shape[2]))


class Plateau:
    """Lightning's ``EarlyStopping`` rule (mode "min"): a value improves on the best iff
    ``value + |min_delta| < best`` (float32, as the logged metric); ``wait`` counts checks since the last
    improvement. ``best_epoch`` is the index of the last improving check."""

    def __init__(self, min_delta: float = 0.0) -> None:
        self.min_delta = abs(float(min_delta))
        self.best = torch.tensor(math.inf)
        self.best_epoch: int | None = None
        self.wait = 0
        self.checks = 0

    def update(self, value: torch.Tensor) -> bool:
        """Record one check; True if it improved on the best."""
        value = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
        improved = bool(value + self.min_delta < self.best)
        if improved:
            self.best, self.best_epoch, self.wait = value, self.checks, 0
        else:
            self.wait += 1
        self.checks += 1
        return improved


class TrainingHistory(list):
    """Per-epoch mean training losses (a list of floats) with the held-out side of the fit: ``val`` (per-epoch
    held-out losses; empty without held-out data) and ``best_epoch`` (the epoch whose weights were kept:
    the last improvement of the held-out loss; None without held-out data)."""

    def __init__(self, train: Sequence[float] = (), val: Sequence[float] = (), best_epoch: int | None = None):
        super().__init__(train)
        self.val = list(val)
        self.best_epoch = best_epoch


class AutoencoderModule(pl.LightningModule):
    """Trains a ``BatchedAutoencoder`` on ``(C, B, d)`` batches (all classes per step).

    Loss: ``sum_c MSE_c`` is optimized (exact per-class gradients, see module docstring); the per-epoch mean of
    ``mean_c MSE_c`` is logged as ``prior/ae_recon_loss`` and appended to ``self.loss_history``.
    A batch may also be ``(x, mask)`` with ``mask`` (C, B) marking real rows.
    Validation (held-out support points, one ``(x, mask)`` batch): ``mean_c MSE_c`` is logged as
    ``prior/ae_val_loss`` (what early stopping monitors) and appended to ``self.val_loss_history``; the
    weights of the best epoch (``Plateau`` rule with ``min_delta``) are kept in ``self.best_state``.
    """

    def __init__(
        self,
        autoencoder: BatchedAutoencoder,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        min_delta: float = 0.0,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.autoencoder = autoencoder
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(betas), float(eps), float(weight_decay)
        self.loss_history: list[float] = []
        self.val_loss_history: list[float] = []
        self.plateau = Plateau(min_delta)
        self.best_state: dict[str, torch.Tensor] | None = None
        self._epoch_sum = 0.0
        self._epoch_steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder(x)

    def step_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective = sum_c MSE_c, logged = mean_c MSE_c)`` for one batch."""
        x, mask = (batch if isinstance(batch, (tuple, list)) else (batch, None))
        per_class = masked_class_mse(self.autoencoder(x), x, mask)
        return per_class.sum(), per_class.mean()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        objective, mean_loss = self.step_loss(batch)
        self._epoch_sum += float(mean_loss.detach())
        self._epoch_steps += 1
        if self._trainer is not None:  # the plain-torch engine runs without a Trainer
            self.log("prior/ae_recon_loss", mean_loss.detach(), on_step=False, on_epoch=True, prog_bar=False)
        return objective

    def on_train_epoch_end(self) -> None:
        if self._epoch_steps:
            self.loss_history.append(self._epoch_sum / self._epoch_steps)
        self._epoch_sum, self._epoch_steps = 0.0, 0

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Held-out loss of one (the only) validation batch; records it and keeps the best weights."""
        with torch.no_grad():
            loss = self.step_loss(batch)[1].detach()
        if self._trainer is not None:
            self.log("prior/ae_val_loss", loss, on_step=False, on_epoch=True, prog_bar=False)
        self.val_loss_history.append(float(loss))
        if self.plateau.update(loss):
            self.best_state = {k: v.detach().clone() for k, v in self.autoencoder.state_dict().items()}
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer()

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.autoencoder.parameters(), lr=self.lr, betas=self.betas, eps=self.eps,
            weight_decay=self.weight_decay,
        )


def _as_padded(codes: torch.Tensor | Sequence[torch.Tensor], counts: torch.Tensor | None):  # noqa: ANN202
    if isinstance(codes, torch.Tensor):
        if codes.ndim != 3:
            raise ValueError(f"codes must be (C, n, d) (padded), got shape {tuple(codes.shape)}")
        if counts is None:
            counts = torch.full((codes.shape[0],), codes.shape[1], dtype=torch.long)
        counts = torch.as_tensor(counts, dtype=torch.long)
        if counts.shape != (codes.shape[0],) or (counts > codes.shape[1]).any() or (counts < 1).any():
            raise ValueError(f"counts must be ({codes.shape[0]},) in [1, {codes.shape[1]}], got {counts.tolist()}")
        return codes, counts
    items = list(codes)
    if not items:
        raise ValueError("codes must be a (C, n, d) tensor or a non-empty list of (n_c, d) tensors")
    counts = torch.tensor([t.shape[0] for t in items], dtype=torch.long)
    padded = items[0].new_zeros(len(items), int(counts.max()), items[0].shape[1])
    for c, t in enumerate(items):  # list input only; the tensor path has no per-class loop
        padded[c, : t.shape[0]] = t
    return padded, counts


def fit_autoencoder(
    codes: torch.Tensor | Sequence[torch.Tensor],
    counts: torch.Tensor | None = None,
    *,
    epochs: int = 50,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    bottleneck: int = 8,
    depth: int | None = None,
    negative_slope: float = 0.33,
    engine: str = "lightning",
    trainer_kwargs: dict[str, Any] | None = None,
    val_codes: torch.Tensor | Sequence[torch.Tensor] | None = None,
    val_counts: torch.Tensor | None = None,
    patience: int | None = None,
    min_delta: float = 0.0,
) -> tuple[BatchedAutoencoder, TrainingHistory]:
    """Train one autoencoder per class on its PCA codes, all classes at once.

    ``codes``: (C, n_max, d) padded with ``counts`` (C,) real rows per class (None: all rows real), or a list
    of (n_c, d) tensors. ``engine="lightning"`` (default) runs ``AutoencoderModule`` under a
    ``pl.Trainer`` (CPU, no logger, no checkpoints, no progress bar unless ``trainer_kwargs`` says otherwise);
    ``engine="torch"`` runs the same steps (same batches, same optimizer) in a plain loop with less overhead.

    Held-out data (``val_codes`` (C, m_max, d) + ``val_counts``, same layout; every class needs >= 1 row):
    the held-out loss is computed after every epoch; the returned weights are those of the best epoch, and
    with ``patience`` training stops once the held-out loss has not improved by more than ``min_delta`` for
    ``patience`` epochs (Lightning's ``EarlyStopping`` on ``prior/ae_val_loss``; ``epochs`` is then the
    maximum). Returns ``(autoencoder, history)``: one mean-over-classes training MSE per epoch, with
    ``history.val`` and ``history.best_epoch``.
    """
    if engine not in ("lightning", "torch"):
        raise ValueError(f"engine must be 'lightning' or 'torch', got {engine!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ValueError(f"patience must be None or an int >= 1, got {patience!r}")
    if patience is not None and val_codes is None:
        raise ValueError("patience (early stopping) needs held-out data: pass val_codes (prior.val_fraction > 0)")
    if not (isinstance(min_delta, (int, float)) and min_delta >= 0):
        raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
    codes, counts = _as_padded(codes, counts)
    codes = codes.detach().to(torch.float32)
    C, _, d = codes.shape
    val_batch = None
    if val_codes is not None:
        val_codes, val_counts = _as_padded(val_codes, val_counts)
        if val_codes.shape[0] != C or val_codes.shape[2] != d:
            raise ValueError(f"val_codes must be ({C}, m, {d}) like codes, got {tuple(val_codes.shape)}")
        val_codes = val_codes.detach().to(device=codes.device, dtype=torch.float32)
        mask = torch.arange(val_codes.shape[1], device=codes.device)[None, :] < val_counts.to(codes.device)[:, None]
        val_batch = (val_codes, mask)
    ae = BatchedAutoencoder(C, d, bottleneck, depth, negative_slope, seed=seed)
    module = AutoencoderModule(ae, lr=lr, min_delta=min_delta)
    data = ClassBalancedBatches(codes, counts, batch_size, seed=seed)
    if engine == "torch":
        module.to(codes.device)
        opt = module.make_optimizer()
        for _ in range(epochs):
            module.train()
            for batch in data:
                opt.zero_grad(set_to_none=True)
                loss = module.training_step(batch, 0)
                loss.backward()
                opt.step()
            if val_batch is not None:
                module.eval()
                module.validation_step(val_batch, 0)
            module.on_train_epoch_end()
            if patience is not None and module.plateau.wait >= patience:
                break
    else:
        kwargs: dict[str, Any] = dict(
            accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )
        kwargs.update(trainer_kwargs or {})
        if patience is not None:
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), pl.callbacks.EarlyStopping(
                "prior/ae_val_loss", min_delta=min_delta, patience=patience, mode="min")]
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=0)
        val_loader = (torch.utils.data.DataLoader([val_batch], batch_size=None, num_workers=0)
                      if val_batch is not None else None)
        with warnings.catch_warnings():
            # Our IterableDataset's __len__ is exact (single process); Lightning's pytree notice is its own.
            warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
            warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`.*")
            trainer = pl.Trainer(**kwargs)
            trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader)
    if module.best_state is not None:
        ae.load_state_dict(module.best_state)
    history = TrainingHistory(module.loss_history, module.val_loss_history, module.plateau.best_epoch
                              if val_batch is not None else None)
    return ae.eval(), history
