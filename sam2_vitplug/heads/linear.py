"""Linear probe: BatchNorm + 1x1 convolution on frozen ViT patch features (stride 16)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class LinearHead(nn.Module):
    """The DINOv2 "linear" / "linear4" protocol.

    Reads the raw stride-16 ViT maps (``input = "vit"``); ``layers=1`` uses the last one,
    ``layers=4`` concatenates the four intermediate layers the backbone taps.

    Args:
        in_channels: channels of the four maps the backbone returns.
        num_classes: number of classes (255 is reserved for "ignore").
        layers: 1 or 4.
        dropout: dropout before the classifier (0 keeps a run deterministic on CPU).
    """

    input = "vit"

    def __init__(self, in_channels: Sequence[int], num_classes: int, layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if layers not in (1, 4):
            raise ValueError(f"linear head layers must be 1 (last layer) or 4 (concatenation), got {layers}")
        if len(in_channels) != 4:
            raise ValueError(f"expected 4 backbone maps, got channels {list(in_channels)}")
        self.layers = layers
        dim = int(in_channels[-1]) if layers == 1 else int(sum(in_channels))
        self.norm = nn.BatchNorm2d(dim)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """4 maps ``(B, C_i, h, w)`` -> class logits ``(B, K, h, w)`` at stride 16."""
        x = maps[-1] if self.layers == 1 else torch.cat(list(maps), dim=1)
        return self.classifier(self.dropout(self.norm(x)))
