"""torchvision ImageNet networks as ``Classifier``: the weight-loading rules every such model shares.

ImageNet weights (``IMAGENET1K_V1``) are read from the torch hub cache; a missing file is an error saying
where to put it, downloaded only with ``allow_download``; a ``checkpoint`` state dict replaces them and is
read with ``weights_only=True``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, load_state_dict_into
from .classifier import Classifier

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def hub_file(weights_enum) -> Path:
    """Where torchvision keeps a weights enum's IMAGENET1K_V1 file (the torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights_enum.IMAGENET1K_V1.url)


def build_torchvision_classifier(
    arch: str,
    ctor: Callable[..., nn.Module],
    weights_enum,
    layers_fn: Callable[[nn.Module], dict[str, nn.Module]],
    weights: str | None = "imagenet",
    allow_download: bool = False,
    checkpoint: str | None = None,
    num_classes: int = 1000,
) -> Classifier:
    """``ctor(weights=None, num_classes=...)`` wrapped as a [0,1]-input ``Classifier`` (ImageNet normalization
    inside, named layers from ``layers_fn``), loaded from the hub cache, a checkpoint, or left random.

    Args:
        weights: ``imagenet`` (torchvision's IMAGENET1K_V1 from the torch hub cache) or ``None`` (random).
        allow_download: fetch missing ImageNet weights from the internet (off by default).
        checkpoint: a state dict to load instead (read with ``weights_only=True``).
    """
    if weights not in (None, "imagenet", "none"):
        raise ValueError(f"model.weights={weights!r}: use 'imagenet' or null")
    use_hub = weights == "imagenet" and not checkpoint
    if use_hub:  # check before building: a large network's init takes seconds
        if num_classes != 1000:
            raise ValueError(f"ImageNet weights have 1000 classes, but num_classes={num_classes}")
        path = hub_file(weights_enum)
        if not path.is_file():
            if not allow_download:
                raise CheckpointError(
                    f"ImageNet weights for {arch} not found at {path}. Put torchvision's file there "
                    f"({weights_enum.IMAGENET1K_V1.url}), set TORCH_HOME to where it is, or allow the download "
                    f"with model.<name>.allow_download=true."
                )
            log.info("downloading %s weights to %s", arch, path)
            weights_enum.IMAGENET1K_V1.get_state_dict(progress=True)
    net = ctor(weights=None, num_classes=num_classes)
    model = Classifier(net, IMAGENET_MEAN, IMAGENET_STD, layers_fn(net), num_classes, (3, 224, 224))
    if checkpoint:
        load_state_dict_into(model, checkpoint)
    elif use_hub:
        load_state_dict_into(model.net, path)
    return model
