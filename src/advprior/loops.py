"""Image-level stages as Lightning test loops: one function per batch, in resumable pieces split over ranks.

A stage hands ``run_loop`` a dataset yielding ``(image, label, index)`` (``index`` = position), a ``step(x,
y, idx) -> {table name: rows}`` (a DataFrame, or a dict of tensors whose first dimension is the image) and
the models the step uses. The positions are cut into shards of ``shard_size``; each shard into one
contiguous block per rank, a whole number of batches long, so every batch holds the same images as in a
one-process run (the results are then the same, whatever the number of ranks). Each block's rows are
written atomically as soon as the block is done, one file per table, ``<out>/pieces/<table>.<start>-<stop>
.<parquet|pt>``; a rerun skips every block whose files are all there (at shard granularity, whatever the
number of ranks before). Rank 0 then merges the pieces into ``<out>/<table>.<parquet|pt>`` (sorted) and
deletes them. Undecodable images (dropped by ``SkipNoneCollate``) leave no rows; ``LoopResult.skipped``
lists their positions.

Numerics: with ``precision="bf16-mixed"`` only the models' forward passes run under autocast (their outputs
come back as float32), everything else, the attack step and the prior included, in float32: adversarial
images stay float32 in [0, 1]. ``channels_last`` stores the models and the images as NHWC while the loop
runs (faster convolutions on GPUs).
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks.progress.progress_bar import ProgressBar
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from . import distributed
from .data.imagefiles import SkipNoneCollate
from .utils.io import load_torch, save_parquet, save_torch

log = logging.getLogger(__name__)

Rows = pd.DataFrame | dict[str, torch.Tensor]
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Mapping[str, Rows]]
PIECE = re.compile(r"^(?P<table>[^.]+)\.(?P<start>\d+)-(?P<stop>\d+)\.(?P<ext>parquet|pt)$")


@dataclass(frozen=True)
class Table:
    """One output of a loop: ``kind`` ``"parquet"`` (DataFrame rows, sorted by the ``sort_by`` columns at the
    merge) or ``"torch"`` (dicts of tensors, sorted by ``index_key``); ``index_key`` names the column (key)
    holding the image position."""

    name: str
    kind: str = "parquet"
    sort_by: tuple[str, ...] = ("index",)
    index_key: str = "index"

    @property
    def ext(self) -> str:
        return "parquet" if self.kind == "parquet" else "pt"

    def piece(self, folder: Path, start: int, stop: int) -> Path:
        return folder / f"{self.name}.{start:09d}-{stop:09d}.{self.ext}"

    def merged(self, folder: Path) -> Path:
        return folder / f"{self.name}.{self.ext}"


@dataclass
class LoopResult:
    """What a loop produced: the merged table paths and the positions that yielded no rows (skipped)."""

    paths: dict[str, Path]
    skipped: list[int]


# ---------------------------------------------------------------------------------------------- planning
def subtract(start: int, stop: int, done: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The runs of ``[start, stop)`` not covered by the ``done`` ranges."""
    runs, cur = [], start
    for a, b in sorted(done):
        if b <= cur or a >= stop:
            continue
        if a > cur:
            runs.append((cur, a))
        cur = max(cur, b)
    if cur < stop:
        runs.append((cur, stop))
    return runs


def plan_blocks(n: int, shard_size: int, world: int, batch_size: int,
                done: Sequence[tuple[int, int]] = ()) -> list[list[tuple[int, int]]]:
    """Per rank, the position ranges it computes: every shard's uncovered runs, each split into ``world``
    contiguous blocks of a whole number of batches (counted from the run's start)."""
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}")
    per_rank: list[list[tuple[int, int]]] = [[] for _ in range(world)]
    for s in range(0, n, shard_size):
        for a, b in subtract(s, min(n, s + shard_size), done):
            block = math.ceil(math.ceil((b - a) / world) / batch_size) * batch_size
            for r in range(world):
                lo, hi = a + r * block, min(b, a + (r + 1) * block)
                if lo < hi:
                    per_rank[r].append((lo, hi))
    return per_rank


class RangeBatchSampler(Sampler[list[int]]):
    """Batches of consecutive positions that never straddle two ranges: ``[a, a+B), [a+B, a+2B), ...``.
    Without ranges (a rank with nothing left to do) one empty batch, because Lightning's DDP loop needs
    every rank to take part and refuses a loader of length zero."""

    def __init__(self, ranges: Sequence[tuple[int, int]], batch_size: int) -> None:
        self.ranges, self.batch_size = list(ranges), int(batch_size)

    def batches(self) -> list[list[int]]:
        size = self.batch_size
        out = [list(range(s, min(b, s + size))) for a, b in self.ranges for s in range(a, b, size)]
        return out or [[]]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


# ---------------------------------------------------------------------------------------------- numerics
class StageModel(nn.Module):
    """A model as the image stages run it: under ``precision="bf16-mixed"`` its forward passes (``forward``,
    ``forward_with_features``, ``features``) run under bfloat16 autocast on the input's device and return
    float32; any other attribute is the wrapped model's."""

    def __init__(self, model: nn.Module, autocast: torch.dtype | None = None) -> None:
        super().__init__()
        self.model, self.autocast = model, autocast

    def _ctx(self, x: torch.Tensor):  # noqa: ANN202
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(x.device.type, dtype=self.autocast)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._ctx(x):
            out = self.model(x)
        return out.float()

    def forward_with_features(self, x: torch.Tensor, names) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # noqa: ANN001
        with self._ctx(x):
            logits, feats = self.model.forward_with_features(x, names)
        return logits.float(), {k: v.float() for k, v in feats.items()}

    def features(self, x: torch.Tensor, names) -> dict[str, torch.Tensor]:  # noqa: ANN001
        return self.forward_with_features(x, names)[1]

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The forward passes' dtype for a trainer precision (the schema allows 32-true and bf16-mixed: ``advprior.config.runtime``)."""
    return torch.bfloat16 if str(precision) == "bf16-mixed" else None


def stage_models(models: Mapping[str, nn.Module], precision: str) -> dict[str, nn.Module]:
    """``models`` as the stages run them (see ``StageModel``); unchanged at full precision."""
    dtype = autocast_dtype(precision)
    return {k: StageModel(m, dtype) if dtype is not None else m for k, m in models.items()}


# ---------------------------------------------------------------------------------------------- the loop
class LoopModule(pl.LightningModule):
    """Thin Lightning shell around ``step``: runs it on each test batch, keeps the rows and writes each
    range's rows as soon as its last batch is done (see the module docstring)."""

    def __init__(self, step: Step, models: Mapping[str, nn.Module], tables: Sequence[Table],
                 ranges: Sequence[tuple[int, int]], batch_size: int, out: Path, grad: bool = False,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.step, self.tables, self.out, self.grad = step, list(tables), Path(out), grad
        self.models = nn.ModuleDict(dict(models))
        for m in self.models.values():
            m.eval()
        self.channels_last = channels_last
        self._ranges = list(ranges)
        ends, k = {}, -1
        for r, (a, b) in enumerate(self._ranges):
            k += math.ceil((b - a) / batch_size)
            ends[k] = r
        self._range_end = ends  # batch index -> the range it completes
        self._pending: dict[str, list[Rows]] = {t.name: [] for t in self.tables}

    def train(self, mode: bool = True):  # frozen models stay in eval mode
        return super().train(False)

    def on_test_start(self) -> None:
        if self.channels_last:
            self.models.to(memory_format=torch.channels_last)

    def on_test_end(self) -> None:
        if self.channels_last:
            self.models.to(memory_format=torch.contiguous_format)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y, idx = batch[0], batch[1], batch[2]
        if len(x):
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            # Lightning's precision plugin autocasts the whole step; only the models' forwards may (StageModel)
            with torch.autocast(self.device.type, enabled=False), self._grad_mode():
                rows = self.step(x.clone() if self.grad else x, y, idx)
            for t in self.tables:
                self._pending[t.name].append(rows[t.name])
        if batch_idx in self._range_end:
            self._flush(*self._ranges[self._range_end[batch_idx]])

    def _grad_mode(self):  # noqa: ANN202
        if not self.grad:
            return torch.no_grad()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        return stack

    def _flush(self, start: int, stop: int) -> None:
        folder = self.out / "pieces"
        for t in self.tables:
            parts, self._pending[t.name] = self._pending[t.name], []
            if t.kind == "parquet":
                save_parquet(concat_frames(parts), t.piece(folder, start, stop))
            else:
                rows = {k: torch.cat([p[k].detach().cpu() for p in parts]) for k in parts[0]} if parts else {}
                save_torch(rows, t.piece(folder, start, stop))


class ImageProgressBar(ProgressBar):
    """Rank 0's progress over its planned images: images/s and time left (undecodable images count too)."""

    def __init__(self, desc: str, batch_sizes: Sequence[int]) -> None:
        super().__init__()
        self.desc, self.batch_sizes, self._enabled, self._bar = desc, list(batch_sizes), True, None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=sum(self.batch_sizes), desc=self.desc, unit="img", dynamic_ncols=True,
                             smoothing=0.05)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        if self._bar is not None:
            self._bar.update(self.batch_sizes[batch_idx])

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def concat_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The rows of ``frames``; when none has rows, the first one with columns (an empty table keeps its
    schema), else an empty frame."""
    full = [f for f in frames if len(f)] or [f for f in frames if len(f.columns)][:1]
    return pd.concat(full, ignore_index=True) if full else pd.DataFrame()


def done_ranges(folder: Path, tables: Sequence[Table]) -> list[tuple[int, int]]:
    """Ranges whose pieces exist for every table; pieces of other ranges (a crash between two tables'
    writes) are deleted, so they can never be merged twice."""
    found: dict[tuple[int, int], set[str]] = {}
    for p in folder.glob("*.*-*.*") if folder.is_dir() else []:
        m = PIECE.match(p.name)
        if m:
            found.setdefault((int(m["start"]), int(m["stop"])), set()).add(m["table"])
    names = {t.name for t in tables}
    complete = sorted(r for r, got in found.items() if got >= names)
    for r, got in found.items():
        if not got >= names:
            for t in tables:
                t.piece(folder, *r).unlink(missing_ok=True)
    return complete


def merge_pieces(out: Path, tables: Sequence[Table], n: int) -> LoopResult:
    """Concatenate every table's pieces into ``out/<table>.<ext>`` (sorted), delete the pieces; returns the
    paths and the positions in ``[0, n)`` absent from the first table."""
    folder = out / "pieces"
    ranges = done_ranges(folder, tables)
    covered = sum(b - a for a, b in ranges)
    if covered != n:
        raise RuntimeError(f"{out}: the pieces cover {covered} of {n} images; a rank did not finish")
    paths, present = {}, None
    for t in tables:
        pieces = [t.piece(folder, a, b) for a, b in ranges]
        if t.kind == "parquet":
            df = concat_frames([pd.read_parquet(p) for p in pieces])
            if len(df):
                df = df.sort_values(list(t.sort_by), kind="stable").reset_index(drop=True)
            save_parquet(df, t.merged(out))
            idx = df[t.index_key].to_numpy() if len(df) else []
        else:
            parts = [d for d in (load_torch(p) for p in pieces) if d]
            merged = {k: torch.cat([d[k] for d in parts]) for k in parts[0]} if parts else {}
            if merged:
                order = torch.argsort(merged[t.index_key], stable=True)
                merged = {k: v[order] for k, v in merged.items()}
            save_torch(merged, t.merged(out))
            idx = merged[t.index_key].tolist() if merged else []
        paths[t.name] = t.merged(out)
        if present is None:
            present = {int(i) for i in idx}
    shutil.rmtree(folder)
    return LoopResult(paths, sorted(set(range(n)) - (present or set())))


def run_loop(
    dataset: Dataset,
    step: Step,
    models: Mapping[str, nn.Module],
    tables: Sequence[Table],
    out: str | Path,
    *,
    make_trainer: Callable[..., pl.Trainer],
    shard_size: int,
    batch_size: int,
    num_workers: int = 0,
    input_shape: Sequence[int] = (3, 224, 224),
    grad: bool = False,
    channels_last: bool = False,
    pin_memory: bool = False,
    progress: str | None = None,
) -> LoopResult | None:
    """Run ``step`` over ``dataset`` with the Trainer ``make_trainer(**overrides)`` builds; every rank calls
    this together. Returns the merged tables on rank 0 (None on the others). ``progress``: the progress
    bar's label (None: no bar). See the module docstring for pieces, resume and numerics."""
    out = Path(out)
    n = len(dataset)
    world, rank = distributed.world_size(), distributed.rank()
    plan = None
    if distributed.is_rank_zero():
        done = done_ranges(out / "pieces", tables)
        plan = plan_blocks(n, shard_size, world, batch_size, done)
        if done:
            log.info("%s: resuming, %d of %d images already done", out.name, sum(b - a for a, b in done), n)
    plan = distributed.broadcast_object(plan)
    if any(plan):
        ranges = plan[rank]
        sampler = RangeBatchSampler(ranges, batch_size)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                            collate_fn=SkipNoneCollate(input_shape), pin_memory=pin_memory,
                            persistent_workers=num_workers > 0)
        module = LoopModule(step, models, tables, ranges, batch_size, out, grad=grad, channels_last=channels_last)
        callbacks = []
        if progress:
            where = f" (rank 0 of {world})" if world > 1 else ""
            callbacks.append(ImageProgressBar(progress + where, [len(b) for b in sampler.batches()]))
        trainer = make_trainer(callbacks=callbacks, enable_progress_bar=bool(progress), logger=False,
                               inference_mode=False, use_distributed_sampler=False, limit_test_batches=1.0,
                               num_sanity_val_steps=0)
        trainer.test(module, dataloaders=loader, verbose=False)
    distributed.barrier()  # every rank's pieces are written
    result = merge_pieces(out, tables, n) if distributed.is_rank_zero() else None
    distributed.barrier()
    return result


# ---------------------------------------------------------------------------------------------- stages
def numerics(cfg: Any) -> dict[str, Any]:
    """The settings that change an image stage's numbers beyond its own config: part of its store key."""
    return {"precision": str(cfg.trainer.get("precision", "32-true")),
            "channels_last": bool((cfg.get("compute") or {}).get("channels_last", False))}


def stage_loop(ctx: Any, stage: str, dataset: Dataset, step: Step, models: Mapping[str, nn.Module],
               tables: Sequence[Table], out: Path, *, shard_size: int, grad: bool = False) -> LoopResult | None:
    """``run_loop`` with the run's settings: the Trainer from ``cfg.trainer`` (accelerator, devices,
    strategy, precision), the data config's eval batch size and workers, pinned memory on CUDA,
    ``compute.channels_last`` and a progress bar unless ``trainer.enable_progress_bar=false``."""
    import functools

    from .stages.train import make_trainer
    from .utils.progress import shown

    cfg = ctx.cfg
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    cuda = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    return run_loop(
        dataset, step, models, tables, out,
        make_trainer=functools.partial(make_trainer, ctx, stage, 1),
        shard_size=shard_size, batch_size=int(cfg.data.get("eval_batch_size") or cfg.data.batch_size),
        num_workers=int(cfg.data.get("num_workers", 0)), input_shape=ctx.datamodule.input_shape, grad=grad,
        channels_last=numerics(cfg)["channels_last"], pin_memory=cuda and bool(cfg.data.get("pin_memory", True)),
        progress=stage if shown(cfg.trainer.get("enable_progress_bar", True)) else None,  # a terminal only
    )


def bad_file_metrics(dataset: Dataset, split: str, skipped: Sequence[int]) -> dict[str, int]:
    """``data/bad_files/<split>``: files dropped by the preflight plus those a loop skipped (image-file
    datasets only; in-memory datasets have none)."""
    if not hasattr(dataset, "preflight_bad"):
        return {}
    return {f"data/bad_files/{split}": len(dataset.preflight_bad) + len(skipped)}
