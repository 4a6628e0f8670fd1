"""The one model interface every stage sees: [0,1] pixels in, logits out, named layers readable."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with mean and std as registered buffers (saved with the model)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}; give one value per channel")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Wraps a network so it takes images in [0,1] and returns logits.

    Args:
        net: the network proper, fed normalized images ``(B, C, H, W)``.
        mean, std: per-channel normalization applied inside ``forward`` (buffers, not user code).
        layers: name -> submodule of ``net`` whose OUTPUT is that named activation (e.g. ``"conv1_2"``
            -> the ReLU after the second convolution, ``"fc6"`` -> the ReLU after the first dense layer).
        num_classes: size of the logit vector.

    ``forward(x)`` maps ``(B, C, H, W)`` float in [0,1] to logits ``(B, num_classes)``.
    ``forward_with_features(x, names)`` also returns the named activations of that same pass, with
    autograd intact, so a defense can be differentiated end to end.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        layers: Mapping[str, nn.Module],
        num_classes: int,
        input_size: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.num_classes = int(num_classes)
        self.input_size = tuple(input_size) if input_size is not None else None
        ids = {id(m): n for n, m in net.named_modules()}
        missing = [name for name, m in layers.items() if id(m) not in ids]
        if missing:
            raise ValueError(f"layers {missing} are not submodules of the network")
        # Store module paths, not modules, so the state dict has no duplicate entries.
        self._layer_paths: dict[str, str] = {name: ids[id(m)] for name, m in layers.items()}

    @property
    def layer_names(self) -> list[str]:
        """Named layers in forward order (conv1_1 ... fc8)."""
        return list(self._layer_paths)

    def layer(self, name: str) -> nn.Module:
        """The submodule whose output is activation ``name``."""
        if name not in self._layer_paths:
            raise KeyError(f"unknown layer {name!r}; this model has {self.layer_names}")
        return self.net.get_submodule(self._layer_paths[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def forward_with_features(
        self, x: torch.Tensor, names: Iterable[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the named activations ``{name: (B, ...)}`` of one forward pass."""
        feats: dict[str, torch.Tensor] = {}
        handles = []
        for name in names:
            def hook(_m, _inp, out, name=name):  # noqa: ANN001
                # Clone: torchvision's ReLUs are in-place, a later op could overwrite the stored output.
                feats[name] = out.clone()
            handles.append(self.layer(name).register_forward_hook(hook))
        try:
            logits = self.forward(x)
        finally:
            for h in handles:
                h.remove()
        return logits, feats

    def features(self, x: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Named activations only (same pass as ``forward_with_features``)."""
        return self.forward_with_features(x, names)[1]

    def freeze(self) -> "Classifier":
        """Eval mode and ``requires_grad=False`` on every parameter; returns self."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self
