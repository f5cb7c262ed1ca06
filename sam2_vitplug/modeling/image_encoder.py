"""Thin subclasses of upstream ``sam2.modeling.backbones.image_encoder`` classes.

* ``ViTImageEncoder(ImageEncoder)``: checks ``trunk.channel_list`` against the neck with a
  ``ValueError`` showing both lists (upstream uses ``assert``, which ``python -O`` drops), and
  gives a ``ViTFpnNeck`` built with ``backbone_channel_list: auto`` the trunk's list.
* ``ViTFpnNeck(FpnNeck)``: same parameters and state-dict keys as upstream ``FpnNeck``, so
  checkpoints are interchangeable, with two changes to ``forward``:
  it casts the trunk's maps to the neck's dtype (a trunk with ``force_dtype`` returns fp16/bf16
  maps), and the top-down path resizes to the lateral map's size instead of
  ``scale_factor=2``, so grids that are not a multiple of 2 at stride 16 (image sizes that
  are a multiple of 16 but not of 32) work. For even grids it is the same computation as
  upstream (tested for equality).
"""

from __future__ import annotations

from typing import Any, List, Sequence

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from torch import nn


class ViTImageEncoder(ImageEncoder):
    def __init__(self, trunk: nn.Module, neck: nn.Module, scalp: int = 0) -> None:
        if isinstance(neck, ViTFpnNeck) and neck.channels_pending:
            neck.bind_channels(trunk.channel_list)
        trunk_list = [int(c) for c in trunk.channel_list]
        neck_list = [int(c) for c in neck.backbone_channel_list]
        if trunk_list != neck_list:
            raise ValueError(
                f"trunk.channel_list {trunk_list} does not match neck.backbone_channel_list {neck_list} "
                "(both low-res first). Set the neck's backbone_channel_list to the trunk's out_dims; our configs "
                "do this with backbone_channel_list: ${model.image_encoder.trunk.out_dims}."
            )
        super().__init__(trunk=trunk, neck=neck, scalp=scalp)


class ViTFpnNeck(FpnNeck):
    """Upstream ``FpnNeck`` that also accepts ``backbone_channel_list="auto"``: the lateral convs
    are then created by :class:`ViTImageEncoder` from the trunk's ``channel_list``, so a
    trunk with ``out_dims: auto`` needs no channel numbers in the YAML."""

    def __init__(
        self,
        position_encoding: nn.Module,
        d_model: int,
        backbone_channel_list: Sequence[int] | str,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        **kwargs: Any,
    ) -> None:
        self.channels_pending = isinstance(backbone_channel_list, str)
        if self.channels_pending and backbone_channel_list != "auto":
            raise ValueError(f"backbone_channel_list must be a list of ints or 'auto', got {backbone_channel_list!r}")
        channels = [] if self.channels_pending else list(backbone_channel_list)
        super().__init__(position_encoding, d_model, channels, kernel_size, stride, padding, **kwargs)
        self._conv_args = dict(kernel_size=kernel_size, stride=stride, padding=padding)
        if self.channels_pending and "fpn_top_down_levels" not in kwargs:
            raise ValueError("backbone_channel_list='auto' needs explicit fpn_top_down_levels")

    def bind_channels(self, channel_list: Sequence[int]) -> None:
        """Create the lateral convs for ``channel_list`` (low-res first); once, for ``auto``."""
        if not self.channels_pending:
            raise RuntimeError("bind_channels is only for a neck built with backbone_channel_list='auto'")
        self.backbone_channel_list = [int(c) for c in channel_list]
        for dim in self.backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, self.d_model, **self._conv_args))
            self.convs.append(lateral)
        self.channels_pending = False

    def forward(self, xs: List[torch.Tensor]):
        if len(xs) != len(self.convs):
            raise ValueError(f"ViTFpnNeck expects {len(self.convs)} feature maps, got {len(xs)}")
        dtype = self.convs[0].conv.weight.dtype
        n = len(self.convs) - 1
        out: list = [None] * len(self.convs)
        pos: list = [None] * len(self.convs)
        prev = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i].to(dtype))
            if i in self.fpn_top_down_levels and prev is not None:
                top_down = F.interpolate(
                    prev.to(dtype=torch.float32),
                    size=lateral.shape[-2:],
                    mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                    antialias=False,
                )
                prev = lateral + top_down
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
            pos[i] = self.position_encoding(prev).to(prev.dtype)
        return out, pos
