"""Build SAM2's stride 4/8/16/32 pyramid from single-stride (16) ViT maps.

Levels are produced high-res first (strides 4, 8, 16, 32), the order SAM2 trunks return.
Each level reads its own input map, so the pyramid can be fed from one ViT layer or from
several intermediate layers.

``transform_avg`` (docs/architecture.md section 5): the maps hold the ViT tokens of K transformed copies
of each image, and an ``averager`` (given by the trunk) upsamples, inverts and averages them
(``modeling/transforms.py``). The 1x1 projections run before averaging (both are linear, so the
order does not change the result) and the averaging then works on the narrow channels.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

UpsampleMode = Literal["bilinear", "deconv", "transform_avg"]
UPSAMPLE_MODES = ("bilinear", "deconv", "transform_avg")
# (B*K, C, h, w) maps of K transformed copies, integer scale -> (B, C, h*scale, w*scale) averages
Averager = Callable[[torch.Tensor, int], torch.Tensor]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map.

    Same function and parameters as upstream ``sam2.modeling.sam2_utils.LayerNorm2d``, but one
    fused ``F.layer_norm`` on a channels-last view instead of separate mean/variance passes:
    tools/bench_trunk.py measured it as the largest pyramid op at ViT-L/1024 (663 ms of a
    3.9 s pyramid); the fused form takes about half the time.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class BilinearUp(nn.Module):
    """1x1 projection, then bilinear upsampling by ``scale``.

    Projecting before upsampling is exact (both maps are linear and act on different axes)
    and costs ``scale**2`` times less than projecting the upsampled map.
    """

    def __init__(self, in_dim: int, out_dim: int, scale: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return F.interpolate(x, scale_factor=float(self.scale), mode="bilinear", align_corners=False)


class ProjectAverageUp(nn.Module):
    """1x1 projection of the K transformed copies' maps, then transform-averaged upsampling.

    Same parameters (``proj``) as :class:`BilinearUp`, so a checkpoint trained with one loads
    into the other; with K=1 (identity) both give the same output."""

    def __init__(self, in_dim: int, out_dim: int, scale: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)
        self.scale = scale

    def forward(self, x: torch.Tensor, averager: Averager) -> torch.Tensor:
        return averager(self.proj(x), self.scale)


class DeconvUp(nn.Module):
    """ViTDet-style stack of 2x2 stride-2 transposed convolutions (one per factor of 2)."""

    def __init__(self, in_dim: int, out_dim: int, scale: int) -> None:
        super().__init__()
        if scale not in (2, 4):
            raise NotImplementedError(f"DeconvUp supports scale 2 or 4, got {scale}")
        layers: list[nn.Module] = []
        dim = in_dim
        if scale == 4:
            mid = max(in_dim // 2, out_dim)
            layers += [nn.ConvTranspose2d(dim, mid, 2, stride=2), LayerNorm2d(mid), nn.GELU()]
            dim = mid
        layers.append(nn.ConvTranspose2d(dim, out_dim, 2, stride=2))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthwiseSeparableRefine(nn.Module):
    """Residual depthwise 3x3 + pointwise refinement of an upsampled map.

    The last pointwise conv starts at zero, so a fresh block is the identity and does not
    disturb the upsampled features until it has learnt something.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.act = nn.GELU()
        self.pw = nn.Conv2d(dim, dim, kernel_size=1)
        nn.init.zeros_(self.pw.weight)
        nn.init.zeros_(self.pw.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw(self.act(self.norm(self.dw(x))))


class MultiScalePyramid(nn.Module):
    """Stride-16 ViT maps -> ``[s4, s8, s16, s32]`` maps with ``out_dims`` channels.

    Args:
        in_dim: channels of the ViT maps.
        out_dims: channels per level, **low-res first** (``[C32, C16, C8, C4]``), SAM2's
            ``channel_list`` order.
        upsample_mode: ``bilinear`` (1x1 projection + bilinear), ``deconv`` (ViTDet) or
            ``transform_avg`` (1x1 projection + transform averaging; needs ``averager``).
        refine_highres: add a depthwise-separable refinement on the stride 8 and 4 levels.
    """

    def __init__(
        self,
        in_dim: int,
        out_dims: Sequence[int],
        upsample_mode: UpsampleMode = "bilinear",
        refine_highres: bool = True,
    ) -> None:
        super().__init__()
        if upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}")
        c32, c16, c8, c4 = (int(c) for c in out_dims)
        self.upsample_mode = upsample_mode
        up = {"bilinear": BilinearUp, "deconv": DeconvUp, "transform_avg": ProjectAverageUp}[upsample_mode]
        self.to_s4 = up(in_dim, c4, 4)
        self.to_s8 = up(in_dim, c8, 2)
        self.to_s16 = nn.Conv2d(in_dim, c16, kernel_size=1)
        # 3x3 stride-2 with padding 1 gives ceil(g/2) for odd grids too.
        self.to_s32 = nn.Conv2d(in_dim, c32, kernel_size=3, stride=2, padding=1)
        self.refine_s4 = DepthwiseSeparableRefine(c4) if refine_highres else nn.Identity()
        self.refine_s8 = DepthwiseSeparableRefine(c8) if refine_highres else nn.Identity()

    def forward(self, maps: Sequence[torch.Tensor], averager: Averager | None = None) -> list[torch.Tensor]:
        """``maps``: four ``(B, C, gh, gw)`` stride-16 maps, one per level (s4, s8, s16, s32).

        ``transform_avg``: four ``(B*K, C, gh, gw)`` maps of the K transformed copies and the
        trunk's ``averager``; every level is built from averaged maps (s16 and s32 from the
        average at the token grid itself)."""
        m4, m8, m16, m32 = maps
        if self.upsample_mode == "transform_avg":
            if averager is None:
                raise ValueError("upsample_mode='transform_avg' needs the averager of ViTTrunkMultiScale "
                                 "(the maps are K transformed copies per image)")
            return [
                self.refine_s4(self.to_s4(m4, averager)),
                self.refine_s8(self.to_s8(m8, averager)),
                averager(self.to_s16(m16), 1),
                self.to_s32(averager(m32, 1)),
            ]
        return [
            self.refine_s4(self.to_s4(m4)),
            self.refine_s8(self.to_s8(m8)),
            self.to_s16(m16),
            self.to_s32(m32),
        ]
