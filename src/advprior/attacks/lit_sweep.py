"""``AttackSweepModule``: evaluate FGSM sweeps for several models with Lightning (one device or DDP).

Each test batch is attacked on every model (one gradient per model, one forward per eps); the per-image
outcome rows (and the transfer rows: examples crafted on one model scored on every other) are kept on
the rank that computed them and written as one Parquet shard per rank at the end of the epoch. The
caller merges the shards and drops the duplicates that the distributed sampler's padding creates, so
the merged table holds every image exactly once whatever the number of processes.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from torch import nn

from ..analysis.outcomes import concat_outcomes, outcome_rows, read_outcomes, write_outcomes
from ..utils.io import save_parquet
from .sweep import FGSMSweep

log = logging.getLogger(__name__)

TRANSFER_ROW_COLUMNS = ["source", "target", "eps", "index", "label", "clean_pred", "adv_pred", "adv_conf"]


class AttackSweepModule(pl.LightningModule):
    """Runs ``FGSMSweep`` on every model for each test batch and writes outcome shards per rank.

    Args:
        models: name -> model ([0,1] images -> logits), frozen.
        epsilons: budgets in [0,1] pixel units.
        out_dir: where ``outcomes.rank{r}.parquet`` and ``transfer.rank{r}.parquet`` go.
        use_true_labels: attack the true labels (paper) or, if False, the models' own predictions.
        close: optional (C, C) bool matrix for the conatural category.
        transfer: also score each model's adversarial images on every other model.
        paths: optional dataset-index -> file path lookup for the outcome table.
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        epsilons: Sequence[float],
        out_dir: str | Path,
        use_true_labels: bool = True,
        high_conf_threshold: float = 0.5,
        refocus_min_prob: float = 0.05,
        close: torch.Tensor | None = None,
        transfer: bool = True,
        paths: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.models = nn.ModuleDict(dict(models))
        for m in self.models.values():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        self.epsilons = [float(e) for e in epsilons]
        self.out_dir = Path(out_dir)
        self.use_true_labels = use_true_labels
        self.high_conf_threshold, self.refocus_min_prob = high_conf_threshold, refocus_min_prob
        self.close = close
        self.transfer = transfer and len(self.models) > 1
        self.paths = list(paths) if paths is not None else None
        self._rows: list[pd.DataFrame] = []
        self._transfer: list[dict] = []

    def train(self, mode: bool = True):  # frozen models stay in eval mode
        return super().train(False)

    def on_test_epoch_start(self) -> None:
        self._rows, self._transfer = [], []

    def test_step(self, batch, batch_idx):
        x, y, idx = batch[0], batch[1], batch[2]
        paths = [self.paths[int(i)] for i in idx] if self.paths is not None else None
        with torch.inference_mode(False), torch.enable_grad():
            x, y = x.clone(), y.clone()
            results = {name: FGSMSweep(m, self.epsilons).sweep(x, y if self.use_true_labels else None)
                       for name, m in self.models.items()}
        for src, r in results.items():
            for k, eps in enumerate(self.epsilons):
                adv = r.adv_images(k)
                rows = outcome_rows(idx, y, r.clean_logits, r.adv_logits[k], x, adv, eps,
                                    high_conf_threshold=self.high_conf_threshold, close=self.close,
                                    refocus_min_prob=self.refocus_min_prob, paths=paths)
                rows.insert(0, "model", src)
                self._rows.append(rows)
                if not self.transfer:
                    continue
                with torch.no_grad():
                    for tgt, tm in self.models.items():
                        if tgt == src:
                            continue
                        probs = tm(adv).double().softmax(1)
                        conf, pred = probs.max(1)
                        self._transfer.append({
                            "source": src, "target": tgt, "eps": eps, "index": idx.cpu(), "label": y.cpu(),
                            "clean_pred": results[tgt].clean_logits.argmax(1).cpu(),
                            "adv_pred": pred.cpu(), "adv_conf": conf.cpu(),
                        })

    def on_test_epoch_end(self) -> None:
        rank = self.global_rank
        write_outcomes(concat_outcomes(self._rows), self.out_dir / f"outcomes.rank{rank}.parquet")
        save_parquet(transfer_frame(self._transfer), self.out_dir / f"transfer.rank{rank}.parquet")
        self._rows, self._transfer = [], []


def transfer_frame(records: list[dict]) -> pd.DataFrame:
    """Long transfer rows: one per (source, target, eps, image)."""
    if not records:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            TRANSFER_ROW_COLUMNS, ["str", "str", "float64", "int64", "int64", "int64", "int64", "float64"])})
    frames = []
    for r in records:
        n = len(r["index"])
        frames.append(pd.DataFrame({
            "source": [r["source"]] * n, "target": [r["target"]] * n, "eps": [r["eps"]] * n,
            "index": r["index"].numpy().astype("int64"), "label": r["label"].numpy().astype("int64"),
            "clean_pred": r["clean_pred"].numpy().astype("int64"), "adv_pred": r["adv_pred"].numpy().astype("int64"),
            "adv_conf": r["adv_conf"].numpy().astype("float64"),
        }))
    return pd.concat(frames, ignore_index=True)


def merge_rank_shards(out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge the per-rank shards, dropping sampler padding duplicates; sorted by (model, eps, index)."""
    out = [read_outcomes(p) for p in sorted(out_dir.glob("outcomes.rank*.parquet"))]
    tr = [pd.read_parquet(p) for p in sorted(out_dir.glob("transfer.rank*.parquet"))]
    if not out:
        raise FileNotFoundError(f"no outcome shards in {out_dir}: the evaluation did not finish")
    outcomes = pd.concat(out, ignore_index=True).drop_duplicates(["model", "eps", "index"])
    outcomes = outcomes.sort_values(["model", "eps", "index"], kind="stable").reset_index(drop=True)
    transfer = pd.concat(tr, ignore_index=True).drop_duplicates(["source", "target", "eps", "index"])
    transfer = transfer.sort_values(["source", "target", "eps", "index"], kind="stable").reset_index(drop=True)
    return outcomes, transfer
