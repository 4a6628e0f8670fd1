"""torchvision VGGs (vgg16, vgg19, vgg19_bn) as ``Classifier`` with VGG layer names."""
from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision import models as tvm

from .classifier import Classifier
from .torchvision_hub import IMAGENET_MEAN, IMAGENET_STD, build_torchvision_classifier, hub_file

__all__ = ["ARCHS", "IMAGENET_MEAN", "IMAGENET_STD", "build_torchvision_vgg", "hub_weights_path", "vgg_layers"]

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
    return hub_file(ARCHS[arch][1])


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
    ctor, wenum = ARCHS[arch]
    return build_torchvision_classifier(arch, ctor, wenum, vgg_layers, weights, allow_download, checkpoint, num_classes)
