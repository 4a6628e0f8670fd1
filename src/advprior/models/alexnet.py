"""torchvision's AlexNet as a ``Classifier`` with Caffe's layer names (the source net of Nguyen et al.'s
fooling images and of the paper's Figure 1)."""
from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision import models as tvm

from .classifier import Classifier
from .torchvision_hub import build_torchvision_classifier, hub_file


def alexnet_layers(net: tvm.AlexNet) -> dict[str, nn.Module]:
    """``conv1``..``conv5`` -> the ReLU after each convolution, ``pool1``/``pool2``/``pool5`` -> the
    max-pools, ``fc6``/``fc7`` -> their ReLUs, ``fc8`` -> the last Linear (logits)."""
    layers: dict[str, nn.Module] = {}
    conv = 0
    for m in net.features:
        if isinstance(m, nn.Conv2d):
            conv += 1
        elif isinstance(m, nn.ReLU):
            layers[f"conv{conv}"] = m
        elif isinstance(m, nn.MaxPool2d):
            layers[f"pool{conv}"] = m
    linears = [m for m in net.classifier if isinstance(m, nn.Linear)]
    relus = [m for m in net.classifier if isinstance(m, nn.ReLU)]
    layers["fc6"], layers["fc7"], layers["fc8"] = relus[0], relus[1], linears[2]
    return layers


def alexnet_weights_path() -> Path:
    """Where torchvision keeps AlexNet's IMAGENET1K_V1 file (the torch hub cache)."""
    return hub_file(tvm.AlexNet_Weights)


def build_torchvision_alexnet(
    weights: str | None = "imagenet",
    allow_download: bool = False,
    checkpoint: str | None = None,
    num_classes: int = 1000,
) -> Classifier:
    """torchvision's AlexNet taking [0,1] images (ImageNet normalization inside); the same weight rules as
    ``build_torchvision_vgg``: hub cache, no download unless ``allow_download``, ``checkpoint`` read with
    ``weights_only=True``. Inputs need at least 63x63 pixels (three stride-2 max-pools after a stride-4 conv)."""
    return build_torchvision_classifier("alexnet", tvm.alexnet, tvm.AlexNet_Weights, alexnet_layers, weights,
                                        allow_download, checkpoint, num_classes)
