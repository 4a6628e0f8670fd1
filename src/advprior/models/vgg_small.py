"""``vgg_small``: the embedded default's deep net, VGG-style with VGG's layer names."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from .classifier import Classifier


def build_vgg_small(
    num_classes: int,
    in_channels: int = 1,
    image_size: int = 32,
    widths: Sequence[int] = (16, 32, 64, 128, 128),
    convs_per_block: Sequence[int] = (2, 2, 2, 2, 2),
    hidden: int = 256,
    dropout: float = 0.5,
    batch_norm: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Classifier:
    """VGG-style net: blocks of 3x3 conv(+BN)+ReLU, each closed by a 2x2 max-pool, then fc6, fc7, fc8.

    ``batch_norm`` (as in torchvision's vgg19_bn) makes a 10-conv stack train in a few epochs on CPU.

    Named activations (post-ReLU, as in Caffe/Lasagne VGG): ``conv{b}_{i}``, ``fc6``, ``fc7``; ``fc8``
    is the logits. Input ``(B, in_channels, image_size, image_size)`` in [0,1].
    """
    if len(widths) != len(convs_per_block):
        raise ValueError(
            f"model.widths has {len(widths)} blocks but model.convs_per_block has {len(convs_per_block)}; give one entry per block"
        )
    if image_size % (2 ** len(widths)):
        raise ValueError(f"model image_size={image_size} must be divisible by 2**blocks={2 ** len(widths)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
    if hidden <= 0 or any(w <= 0 for w in widths) or any(c <= 0 for c in convs_per_block):
        raise ValueError("model.hidden, model.widths and model.convs_per_block must be positive")
    mods: OrderedDict[str, nn.Module] = OrderedDict()
    layers: dict[str, nn.Module] = {}
    c = in_channels
    for b, (w, n) in enumerate(zip(widths, convs_per_block), start=1):
        for i in range(1, n + 1):
            mods[f"conv{b}_{i}"] = nn.Conv2d(c, w, 3, padding=1)
            if batch_norm:
                mods[f"bn{b}_{i}"] = nn.BatchNorm2d(w)
            mods[f"relu{b}_{i}"] = layers[f"conv{b}_{i}"] = nn.ReLU()
            c = w
        mods[f"pool{b}"] = nn.MaxPool2d(2)
    side = image_size // 2 ** len(widths)
    mods["flatten"] = nn.Flatten()
    mods["fc6"] = nn.Linear(c * side * side, hidden)
    mods["relu6"] = layers["fc6"] = nn.ReLU()
    mods["drop6"] = nn.Dropout(dropout)
    mods["fc7"] = nn.Linear(hidden, hidden)
    mods["relu7"] = layers["fc7"] = nn.ReLU()
    mods["drop7"] = nn.Dropout(dropout)
    mods["fc8"] = layers["fc8"] = nn.Linear(hidden, num_classes)
    net = nn.Sequential(mods)
    init_vgg_weights(net)
    return Classifier(
        net,
        mean=mean if mean is not None else [0.5] * in_channels,
        std=std if std is not None else [0.5] * in_channels,
        layers=layers,
        num_classes=num_classes,
        input_size=(in_channels, image_size, image_size),
    )


def init_vgg_weights(net: nn.Module) -> None:
    """He init (Kaiming-normal convs and dense layers): a plain deep stack without
    batch norm does not train from PyTorch's default init."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
