"""``AttackStep``: the FGSM study's work on one batch, for every model; the Lightning loop around it is
``advprior.loops.run_loop`` (one device or DDP, resumable pieces).

Each batch is attacked on every model (one gradient per model, one forward per eps) and yields the
per-image outcome rows and the transfer rows (examples crafted on one model scored on every other).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from ..analysis.outcomes import DERIVED_COLUMNS, concat_outcomes, outcome_rows
from ..loops import Table
from .sweep import FGSMSweep

log = logging.getLogger(__name__)

TRANSFER_ROW_COLUMNS = ["source", "target", "eps", "index", "label", "clean_pred", "adv_pred", "adv_conf"]
TABLES = (Table("outcomes", sort_by=("model", "eps", "index")),
          Table("transfer", sort_by=("source", "target", "eps", "index")))


class AttackStep:
    """``step(x, y, idx) -> {"outcomes": rows, "transfer": rows}`` for one batch (autograd must be on).

    Args:
        models: name -> model ([0,1] images -> logits), frozen, in eval mode.
        epsilons: budgets in [0,1] pixel units.
        use_true_labels: attack the true labels (paper) or, if False, the models' own predictions.
        transfer: also score each model's adversarial images on every other model.
        paths: optional dataset-index -> file path lookup for the outcome table.
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        epsilons: Sequence[float],
        use_true_labels: bool = True,
        transfer: bool = True,
        paths: Sequence[str] | None = None,
    ) -> None:
        self.models = dict(models)
        self.epsilons = [float(e) for e in epsilons]
        self.use_true_labels = use_true_labels
        self.transfer = transfer and len(self.models) > 1
        self.paths = list(paths) if paths is not None else None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, pd.DataFrame]:
        paths = [self.paths[int(i)] for i in idx] if self.paths is not None else None
        results = {name: FGSMSweep(m, self.epsilons).sweep(x, y if self.use_true_labels else None)
                   for name, m in self.models.items()}
        rows, transfer = [], []
        for src, r in results.items():
            for k, eps in enumerate(self.epsilons):
                adv = r.adv_images(k)
                out = outcome_rows(idx, y, r.clean_logits, r.adv_logits[k], x, adv, eps, paths=paths)
                out.insert(0, "model", src)
                rows.append(out)
                if not self.transfer:
                    continue
                with torch.no_grad():
                    for tgt, tm in self.models.items():
                        if tgt == src:
                            continue
                        conf, pred = tm(adv).double().softmax(1).max(1)
                        transfer.append({
                            "source": src, "target": tgt, "eps": eps, "index": idx.cpu(), "label": y.cpu(),
                            "clean_pred": results[tgt].clean_logits.argmax(1).cpu(),
                            "adv_pred": pred.cpu(), "adv_conf": conf.cpu(),
                        })
        # high_confidence and category are not stored: the summary derives them (derive_outcomes)
        outcomes = concat_outcomes(rows).drop(columns=list(DERIVED_COLUMNS))
        return {"outcomes": outcomes, "transfer": transfer_frame(transfer)}


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
