"""torchvision VGGs (vgg16, vgg19, vgg19_bn) as ``Classifier`` with VGG layer names."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from .checkpoint import CheckpointError, load_state_dict_into
from .classifier import Classifier

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = {
    "vgg16": (tvm.vgg16, tvm.VGG16_Weights),
    "vgg19": (tvm.vgg19, tvm.VGG19_Weights),
    "vgg19_bn": (tvm.vgg19_bn, tvm.VGG19_BN_Weights),
}


def vgg_layers(net: tvm.VGG) -> dict[str, nn.Module]:
    """Map VGG names to torchvision modules: ``conv{b}_{i}`` -> its ReLU, ``fc6``/``fc7`` -> their ReLU,
    ``pool{b}`` -> the max-pool, ``fc8`` -> the last Linear (logits)."""
    layers: dict[str, nn.Module] = {}
    block, conv = 1, 0
    for m in net.features:
        if isinstance(m, nn.Conv2d):
            conv += 1
        elif isinstance(m, nn.ReLU):
            layers[f"conv{block}_{conv}"] = m
        elif isinstance(m, nn.MaxPool2d):
            layers[f"pool{block}"] = m
            block, conv = block + 1, 0
    linears = [m for m in net.classifier if isinstance(m, nn.Linear)]
    relus = [m for m in net.classifier if isinstance(m, nn.ReLU)]
    layers["fc6"], layers["fc7"], layers["fc8"] = relus[0], relus[1], linears[2]
    return layers


def hub_weights_path(arch: str) -> Path:
    """Where torchvision keeps the IMAGENET1K_V1 file for ``arch`` (the torch hub cache)."""
    weights = ARCHS[arch][1].IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def build_torchvision_vgg(
    arch: str = "vgg19",
    weights: str | None = "imagenet",
    allow_download: bool = False,
    checkpoint: str | None = None,
    num_classes: int = 1000,
) -> Classifier:
    """A torchvision VGG taking [0,1] images (ImageNet normalization inside).

    Args:
        arch: ``vgg16``, ``vgg19`` or ``vgg19_bn``.
        weights: ``imagenet`` (torchvision's IMAGENET1K_V1 from the torch hub cache) or ``None`` (random).
        allow_download: fetch missing ImageNet weights from the internet (off by default).
        checkpoint: a state dict to load instead (read with ``weights_only=True``).
    """
    if arch not in ARCHS:
        raise ValueError(f"model.arch={arch!r} is not supported; choose one of {sorted(ARCHS)}")
    if weights not in (None, "imagenet", "none"):
        raise ValueError(f"model.weights={weights!r}: use 'imagenet' or null")
    ctor, wenum = ARCHS[arch]
    use_hub = weights == "imagenet" and not checkpoint
    if use_hub:  # check before building: a 140M-parameter init takes seconds
        if num_classes != 1000:
            raise ValueError(f"ImageNet weights have 1000 classes, but num_classes={num_classes}")
        path = hub_weights_path(arch)
        if not path.is_file():
            if not allow_download:
                raise CheckpointError(
                    f"ImageNet weights for {arch} not found at {path}. Put torchvision's file there "
                    f"({wenum.IMAGENET1K_V1.url}), set TORCH_HOME to where it is, or allow the download "
                    f"with model.<name>.allow_download=true."
                )
            log.info("downloading %s weights to %s", arch, path)
            wenum.IMAGENET1K_V1.get_state_dict(progress=True)
    net = ctor(weights=None, num_classes=num_classes)
    model = Classifier(net, IMAGENET_MEAN, IMAGENET_STD, vgg_layers(net), num_classes, (3, 224, 224))
    if checkpoint:
        load_state_dict_into(model, checkpoint)
    elif use_hub:
        load_state_dict_into(model.net, path)
    return model
