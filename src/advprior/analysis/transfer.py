"""Transfer of adversarial examples across models: examples crafted on a source model, evaluated on a target.

Definitions (per (source, target) pair, all predictions made by the TARGET model):

- ``n``: number of images; ``n_correct``: images the target classifies correctly when clean.
- ``fooling_rate``: among the ``n_correct`` images, the fraction whose target top-1 changed on the
  adversarial image (adv top-1 != clean top-1, which here equals != true label). Images the target already
  got wrong are left out, so a weak target is not credited with being "fooled". NaN when ``n_correct`` is 0.
- ``adv_acc``: target top-1 accuracy on the adversarial images (all ``n``).
- ``mean_confidence``: mean target top-1 softmax probability on the adversarial images (all ``n``);
  ``mean_confidence_fooled``: the same over the fooled images only (NaN if none).

Intervals (``_low``/``_high``, level 1 - alpha): Wilson score intervals for the two rates, a seeded BCa
bootstrap (``n_boot`` resamples) for ``mean_confidence`` (``advprior.analysis.intervals``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from advprior.analysis.categories import to_numpy
from advprior.analysis.intervals import bca_interval, rate_interval

TRANSFER_COLUMNS: tuple[str, ...] = (
    "source", "target", "n", "n_correct",
    "fooling_rate", "fooling_rate_low", "fooling_rate_high",
    "adv_acc", "adv_acc_low", "adv_acc_high",
    "mean_confidence", "mean_confidence_low", "mean_confidence_high",
    "mean_confidence_fooled",
)


def _unpack_predictions(key: Any, value: Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """labels, clean_preds, adv_pred (target top-1) and adv_conf (its probability), all (N,)."""
    try:
        arrays = [to_numpy(value[k]).reshape(-1) for k in ("labels", "clean_preds", "adv_pred", "adv_conf")]
    except KeyError as e:
        raise ValueError(f"results[{key!r}] is missing {e.args[0]!r}; needs labels, clean_preds, adv_pred, adv_conf") from None
    if len({a.shape[0] for a in arrays}) != 1:
        raise ValueError(f"results[{key!r}]: labels, clean_preds, adv_pred and adv_conf must have one length, got "
                         f"{[a.shape[0] for a in arrays]}")
    labels, clean_preds, adv_pred, conf = arrays
    return labels.astype(np.int64), clean_preds.astype(np.int64), adv_pred.astype(np.int64), conf.astype(np.float64)


def _unpack(key: Any, value: Any) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    if isinstance(value, Mapping):
        if "clean_preds" in value:
            clean_preds = to_numpy(value["clean_preds"])
        elif "clean_logits" in value:
            clean_preds = to_numpy(torch.as_tensor(value["clean_logits"]).argmax(dim=1))
        else:
            raise ValueError(f"results[{key!r}] needs 'clean_preds' or 'clean_logits', has {sorted(value)}")
        try:
            labels, adv_logits = value["labels"], value["adv_logits"]
        except KeyError as e:
            raise ValueError(f"results[{key!r}] is missing {e.args[0]!r}; needs labels, clean_preds, adv_logits") from None
    else:
        try:
            labels, clean_preds, adv_logits = value
        except (TypeError, ValueError):
            raise ValueError(
                f"results[{key!r}] must be a mapping or a (labels, clean_preds, adv_logits) tuple, got {type(value).__name__}"
            ) from None
        clean_preds = to_numpy(clean_preds)
    labels = to_numpy(labels).astype(np.int64).reshape(-1)
    clean_preds = clean_preds.astype(np.int64).reshape(-1)
    adv_logits = torch.as_tensor(adv_logits).detach().cpu().double()
    if adv_logits.ndim != 2 or not (labels.shape[0] == clean_preds.shape[0] == adv_logits.shape[0]):
        raise ValueError(
            f"results[{key!r}]: labels (N,), clean_preds (N,) and adv_logits (N, C) must agree, got "
            f"{labels.shape}, {clean_preds.shape}, {tuple(adv_logits.shape)}"
        )
    return labels, clean_preds, adv_logits


def transfer_matrix(
    results: Mapping[tuple[str, str], Any], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> pd.DataFrame:
    """Long table, one row per (source, target) in ``results`` order, with ``TRANSFER_COLUMNS``.

    results: ``{(source, target): {"labels": (N,), "clean_preds": (N,), "adv_logits": (N, C)}}`` (or a
    ``(labels, clean_preds, adv_logits)`` tuple; ``clean_logits`` (N, C) may replace ``clean_preds``;
    ``adv_pred`` (N,) with ``adv_conf`` (N,), the target's top-1 and its probability, may replace ``adv_logits``),
    where clean_preds / adv_logits come from the target model and the adversarial images were crafted on
    the source model.
    """
    records = []
    for key, value in results.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"results keys must be (source, target) pairs, got {key!r}")
        if isinstance(value, Mapping) and "adv_pred" in value and "adv_conf" in value:
            labels, clean_preds, adv_pred, conf = _unpack_predictions(key, value)
        else:
            labels, clean_preds, adv_logits = _unpack(key, value)
            conf_t, pred_t = adv_logits.softmax(dim=1).max(dim=1)
            conf, adv_pred = conf_t.numpy(), pred_t.numpy()
        correct = clean_preds == labels
        changed = adv_pred != clean_preds
        fooled = changed[correct]
        rec: dict[str, Any] = {"source": str(key[0]), "target": str(key[1]), "n": int(labels.shape[0]),
                               "n_correct": int(correct.sum())}
        for name, ci in (("fooling_rate", rate_interval(fooled, alpha)),
                         ("adv_acc", rate_interval(adv_pred == labels, alpha)),
                         ("mean_confidence", bca_interval(conf, n_resamples=n_boot, alpha=alpha, seed=seed))):
            rec[name], rec[f"{name}_low"], rec[f"{name}_high"] = ci.estimate, ci.low, ci.high
        fooled_mask = correct & changed
        rec["mean_confidence_fooled"] = float(conf[fooled_mask].mean()) if fooled_mask.any() else float("nan")
        records.append(rec)
    out = pd.DataFrame.from_records(records, columns=list(TRANSFER_COLUMNS))
    return out.astype({"source": "str", "target": "str", "n": "int64", "n_correct": "int64"})


def pivot(matrix: pd.DataFrame, value: str = "fooling_rate") -> pd.DataFrame:
    """source (rows) x target (columns) table of one column of ``transfer_matrix`` (NaN for missing pairs).

    Row and column order follow first appearance in ``matrix``.
    """
    if value not in matrix.columns:
        raise ValueError(f"value must be a column of the transfer matrix {list(matrix.columns)}, got {value!r}")
    table = matrix.pivot(index="source", columns="target", values=value)
    rows = list(dict.fromkeys(matrix["source"]))
    cols = list(dict.fromkeys(matrix["target"]))
    return table.reindex(index=rows, columns=cols)
