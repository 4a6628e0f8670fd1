"""``shallow``: the comparison net, from softmax regression (hidden=0) to one hidden layer."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from .classifier import Classifier


def build_shallow(
    num_classes: int,
    in_channels: int = 1,
    image_size: int = 32,
    hidden: int = 0,
    dropout: float = 0.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Classifier:
    """Goodfellow et al.'s "shallow softmax" (``hidden=0``) or a one-hidden-layer ReLU net.

    Named activations: ``fc1`` (the hidden layer, post-ReLU, only when ``hidden > 0``) and ``logits``.
    """
    if hidden < 0:
        raise ValueError(f"model.hidden must be >= 0 (0 = softmax regression), got {hidden}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
    mods: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    layers: dict[str, nn.Module] = {}
    width = in_channels * image_size * image_size
    if hidden:
        mods["fc1"] = nn.Linear(width, hidden)
        mods["relu1"] = layers["fc1"] = nn.ReLU()
        mods["drop1"] = nn.Dropout(dropout)
        width = hidden
    mods["logits"] = layers["logits"] = nn.Linear(width, num_classes)
    return Classifier(
        nn.Sequential(mods),
        mean=mean if mean is not None else [0.5] * in_channels,
        std=std if std is not None else [0.5] * in_channels,
        layers=layers,
        num_classes=num_classes,
        input_size=(in_channels, image_size, image_size),
    )
