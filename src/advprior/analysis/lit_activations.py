"""``ActivationChangeModule``: the layer-wise relative change over the evaluated images as a Lightning test
loop (one device or DDP), a thin shell around ``activations.layer_change_batch``.

Each rank keeps the rows (and figure examples) of the batches it saw and writes them at the end of the
epoch as ``layer_change.rank{r}.parquet`` (and ``examples.rank{r}.pt``); ``merge_rank_shards`` joins them and
drops the duplicates that the distributed sampler's padding creates, as for the attack study.
"""
from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from torch import nn

from ..utils.io import load_torch, save_parquet, save_torch
from .activations import BatchExamples, empty_layer_change, layer_change_batch

log = logging.getLogger(__name__)

ROW_KEY = ["model", "eps", "layer", "index"]


class ActivationChangeModule(pl.LightningModule):
    """Runs ``layer_change_batch`` on every model for each test batch; writes shards per rank.

    Args:
        models: name -> frozen ``Classifier``.
        epsilons: budgets in [0,1] pixel units (the attack study's values).
        layers: name -> the layers whose relative change is recorded for that model.
        out_dir: where the per-rank files go.
        use_true_labels: attack the true labels (the study's ``attack.labels``) or the model's own predictions.
        map_model, map_layers, example_indices, figure_eps: the Figure 7/8 examples (dataset indices) of
            ``map_model`` at ``figure_eps``, with heat maps at ``map_layers``.
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        epsilons: Sequence[float],
        layers: Mapping[str, Sequence[str]],
        out_dir: str | Path,
        use_true_labels: bool = True,
        map_model: str | None = None,
        map_layers: Sequence[str] = (),
        example_indices: Collection[int] = (),
        figure_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.models = nn.ModuleDict(dict(models))
        for m in self.models.values():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        self.epsilons = [float(e) for e in epsilons]
        self.layers = {name: list(v) for name, v in layers.items()}
        self.out_dir = Path(out_dir)
        self.use_true_labels = use_true_labels
        self.map_model, self.map_layers = map_model, list(map_layers)
        self.example_indices = {int(i) for i in example_indices}
        self.figure_eps = figure_eps
        self._rows: list[pd.DataFrame] = []
        self._examples: list[BatchExamples] = []

    def train(self, mode: bool = True):  # frozen models stay in eval mode
        return super().train(False)

    def on_test_epoch_start(self) -> None:
        self._rows, self._examples = [], []

    def test_step(self, batch, batch_idx):
        x, y, idx = batch[0], batch[1], batch[2]
        with torch.inference_mode(False), torch.enable_grad():
            x, y = x.clone(), y.clone()
            for name, m in self.models.items():
                mine = name == self.map_model
                rows, ex = layer_change_batch(
                    m, name, x, idx, y if self.use_true_labels else None, self.epsilons, self.layers[name],
                    map_layers=self.map_layers if mine else (), example_indices=self.example_indices if mine else (),
                    figure_eps=self.figure_eps)
                self._rows.append(rows)
                if ex is not None:
                    self._examples.append(ex)

    def on_test_epoch_end(self) -> None:
        rank = self.global_rank
        rows = pd.concat(self._rows, ignore_index=True) if self._rows else empty_layer_change()
        save_parquet(rows, self.out_dir / f"layer_change.rank{rank}.parquet")
        save_torch(concat_examples(self._examples), self.out_dir / f"examples.rank{rank}.pt")
        self._rows, self._examples = [], []


def concat_examples(parts: Sequence[BatchExamples | dict]) -> dict[str, torch.Tensor]:
    """Stack figure examples (batches or their dicts) into one dict of tensors (empty dict for none)."""
    dicts = [p.as_dict() if isinstance(p, BatchExamples) else p for p in parts]
    dicts = [d for d in dicts if d and len(d["index"])]
    if not dicts:
        return {}
    return {k: torch.cat([d[k] for d in dicts]) for k in dicts[0]}


def merge_rank_shards(out_dir: Path) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """Every rank's rows and examples of one shard, without the sampler's padding duplicates; rows sorted
    by (model, eps, depth, index), examples by index."""
    parts = sorted(out_dir.glob("layer_change.rank*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no layer-change shards in {out_dir}: the evaluation did not finish")
    rows = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True).drop_duplicates(ROW_KEY)
    rows = rows.sort_values(["model", "eps", "depth", "index"], kind="stable").reset_index(drop=True)
    ex = concat_examples([load_torch(p) for p in sorted(out_dir.glob("examples.rank*.pt"))])
    if ex:
        first = {}
        for pos, i in enumerate(ex["index"].tolist()):
            first.setdefault(i, pos)
        keep = torch.tensor([first[i] for i in sorted(first)], dtype=torch.long)
        ex = {k: v[keep] for k, v in ex.items()}
    return rows, ex
