"""Load state dicts safely (``weights_only=True``) with errors that say what is wrong and how to fix it."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable or does not fit the model."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` (a plain state dict or a Lightning checkpoint with ``state_dict``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}. Check model.checkpoint (or remove it to use no checkpoint).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/foreign files
        raise CheckpointError(
            f"could not read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "The file may be truncated or not a torch state dict; re-download or re-save it with torch.save(model.state_dict(), path)."
        ) from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


def _strip_prefix(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Accept state dicts saved from the model itself, its ``net``, or a LightningModule (``model.`` prefix)."""
    own = set(model.state_dict())
    for prefix in ("", "model.", "module.", "model.module."):
        cand = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if set(cand) & own:
            return cand
    return state


def load_state_dict_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` strictly; mismatches raise ``CheckpointError``."""
    state = _strip_prefix(read_state_dict(path), model)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: " + "; ".join(parts)
            + ". Check that model architecture and data.num_classes match the checkpoint."
        )
    model.load_state_dict(state, strict=True)
    return model
