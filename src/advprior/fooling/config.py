"""The ``fooling`` settings: the schema lives in ``advprior.config.fooling`` (torch-free, checked before any
work); this module adds what needs torch."""
from __future__ import annotations

import torch

from ..config.fooling import CPPN_ACTIVATIONS, ENCODINGS, CPPNConfig, DirectConfig, FoolingConfig

__all__ = ["CPPN_ACTIVATIONS", "ENCODINGS", "CPPNConfig", "DirectConfig", "FoolingConfig", "resolve_device"]


def resolve_device(fcfg: FoolingConfig, model: torch.nn.Module) -> torch.device:
    """Where to search and score: ``fcfg.device``, with null meaning the model's own device and ``auto`` CUDA
    when available."""
    if fcfg.device is None:
        return next(model.parameters()).device
    if fcfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(fcfg.device)
