"""Thin subclasses of upstream ``sam2.modeling.backbones.image_encoder`` classes.

* ``ViTImageEncoder(ImageEncoder)``: checks ``trunk.channel_list`` against the neck with a
  ``ValueError`` showing both lists (upstream uses ``assert``, which ``python -O`` drops).
* ``ViTFpnNeck(FpnNeck)``: same parameters and state-dict keys as upstream ``FpnNeck``, so
  checkpoints are interchangeable, with two changes to ``forward``:
  it casts the trunk's maps to the neck's dtype (a trunk with ``force_dtype`` returns fp16/bf16
  maps), and the top-down path resizes to the lateral map's size instead of
  ``scale_factor=2``, so grids that are not a multiple of 2 at stride 16 (image sizes that
  are a multiple of 16 but not of 32) work. For even grids it is the same computation as
  upstream (tested for equality).
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from torch import nn


class ViTImageEncoder(ImageEncoder):
    def __init__(self, trunk: nn.Module, neck: nn.Module, scalp: int = 0) -> None:
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
