"""UPerNet: pyramid pooling on the stride-32 level + an FPN over strides 4/8/16/32."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_norm_act(in_dim: int, out_dim: int, kernel: int, norm: bool = True) -> nn.Sequential:
    """Conv + GroupNorm + ReLU. GroupNorm (not BatchNorm) so batch size 1 works and DDP needs
    no SyncBN; at least 4 channels per group (up to 32 groups)."""
    layers: list[nn.Module] = [nn.Conv2d(in_dim, out_dim, kernel, padding=kernel // 2, bias=not norm)]
    if norm:
        layers.append(nn.GroupNorm(math.gcd(32, max(1, out_dim // 4)), out_dim))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PyramidPooling(nn.Module):
    """PSPNet pooling: average-pool to each scale, project, upsample back, concatenate.
    The pooled branches have no norm layer: a 1x1 pooled map has one value per channel."""

    def __init__(self, in_dim: int, channels: int, scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.branches = nn.ModuleList(conv_norm_act(in_dim, channels, 1, norm=False) for _ in self.scales)
        self.bottleneck = conv_norm_act(in_dim + len(self.scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x]
        for scale, branch in zip(self.scales, self.branches):
            pooled = branch(F.adaptive_avg_pool2d(x, scale))
            outs.append(F.interpolate(pooled, size=size, mode="bilinear", align_corners=False))
        return self.bottleneck(torch.cat(outs, dim=1))


class UPerHead(nn.Module):
    """Reads the trainable pyramid's levels (``input = "pyramid"``), high-res first.

    Args:
        in_channels: channels of the stride 4, 8, 16, 32 levels (``trunk.feature_info``).
        num_classes: number of classes.
        channels: width of the FPN and fusion convolutions (512 in the UPerNet paper).
        pool_scales: PPM output sizes.
        dropout: dropout before the classifier.
    """

    input = "pyramid"

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.0) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"UPerNet needs 4 levels (strides 4/8/16/32), got channels {list(in_channels)}")
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.lateral = nn.ModuleList(conv_norm_act(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(conv_norm_act(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = conv_norm_act(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Levels ``[(B, C4, H/4, W/4), ..., (B, C32, H/32, W/32)]`` -> logits ``(B, K, H/4, W/4)``."""
        top = self.ppm(levels[-1])
        laterals = [lat(x) for lat, x in zip(self.lateral, levels[:-1])] + [top]
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False)
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in outs[1:]]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))
