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
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): an interrupted download or save? Re-download it or re-save it "
            "with torch.save(model.state_dict(), path)."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/foreign files
        first = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"could not read checkpoint {path} ({type(e).__name__}: {first}). The file may be truncated or not a "
            "torch state dict; re-download it or re-save it with torch.save(model.state_dict(), path)."
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
    """Load the checkpoint at ``path`` into ``model`` strictly; mismatches raise ``CheckpointError``.

    A state dict of the bare network (e.g. torchvision's own VGG weight file, keys ``features.0.weight``
    without the ``Classifier``'s ``net.`` prefix) loads into ``model.net``; the normalization buffers keep
    their values."""
    raw = read_state_dict(path)
    target, net = model, getattr(model, "net", None)
    if isinstance(net, nn.Module):
        bare = _strip_prefix(raw, net)
        if set(bare) == set(net.state_dict()) and not set(bare) & set(model.state_dict()):
            target = net
    state = _strip_prefix(raw, target)
    own = target.state_dict()
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
    target.load_state_dict(state, strict=True)
    return model
