"""Mask2Former-style head: FPN pixel decoder + masked-attention transformer decoder.

Simplification against the paper, stated: the pixel decoder is a plain FPN over the
pyramid levels (no multi-scale deformable attention, which has no CPU kernel), and the
mask losses are computed on all stride-4 pixels instead of sampled points.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .upernet import conv_norm_act


def sine_position_embedding(h: int, w: int, dim: int, device, dtype) -> torch.Tensor:
    """2D sine/cosine position code ``(h*w, dim)`` (DETR's, normalised to [0, 2pi])."""
    if dim % 4:
        raise ValueError(f"hidden_dim must be divisible by 4 for the 2D position code, got {dim}")
    quarter = dim // 4
    freq = 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    y = ys[:, None] / freq
    x = xs[:, None] / freq
    pos = torch.cat([
        y.sin()[:, None, :].expand(h, w, quarter), y.cos()[:, None, :].expand(h, w, quarter),
        x.sin()[None, :, :].expand(h, w, quarter), x.cos()[None, :, :].expand(h, w, quarter),
    ], dim=-1)
    return pos.reshape(h * w, dim).to(dtype)


class PixelDecoder(nn.Module):
    """FPN over the levels: per-pixel mask features at stride 4 plus three memories
    (strides 32, 16, 8) for the transformer decoder's cross-attention."""

    def __init__(self, in_channels: Sequence[int], hidden_dim: int, mask_dim: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(conv_norm_act(c, hidden_dim, 1) for c in in_channels)
        self.output = nn.ModuleList(conv_norm_act(hidden_dim, hidden_dim, 3) for _ in in_channels)
        self.mask_proj = nn.Conv2d(hidden_dim, mask_dim, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = [lat(x) for lat, x in zip(self.lateral, levels)]
        for i in range(len(feats) - 1, 0, -1):
            feats[i - 1] = feats[i - 1] + F.interpolate(feats[i], size=feats[i - 1].shape[-2:], mode="bilinear",
                                                        align_corners=False)
        outs = [conv(x) for conv, x in zip(self.output, feats)]
        return self.mask_proj(outs[0]), [outs[3], outs[2], outs[1]]


class DecoderLayer(nn.Module):
    """Masked cross-attention, then self-attention, then FFN (Mask2Former's order)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, q: torch.Tensor, qpos: torch.Tensor, memory: torch.Tensor, mpos: torch.Tensor,
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        q = self.norms[0](q + self.cross(q + qpos, memory + mpos, memory, attn_mask=attn_mask, need_weights=False)[0])
        q = self.norms[1](q + self.self_attn(q + qpos, q + qpos, q, need_weights=False)[0])
        return self.norms[2](q + self.ffn(q))


class Mask2FormerHead(nn.Module):
    """N queries predict (class, mask) pairs; semantic maps are their product.

    Args:
        in_channels: channels of the stride 4, 8, 16, 32 levels.
        num_classes: K classes; the class head predicts K+1 (last = no object).
        num_queries: N.
        hidden_dim, mask_dim, heads, ffn_dim: transformer sizes.
        dec_layers: decoder layers; layer i cross-attends to the stride 32/16/8 memory i % 3.
    """

    input = "pyramid"

    def __init__(self, in_channels: Sequence[int], num_classes: int, num_queries: int = 100, hidden_dim: int = 256,
                 mask_dim: int = 256, heads: int = 8, ffn_dim: int = 2048, dec_layers: int = 9) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"Mask2Former needs 4 levels (strides 4/8/16/32), got channels {list(in_channels)}")
        self.num_classes = num_classes
        self.heads = heads
        self.pixel_decoder = PixelDecoder(in_channels, hidden_dim, mask_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_pos = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(3, hidden_dim)
        self.layers = nn.ModuleList(DecoderLayer(hidden_dim, heads, ffn_dim) for _ in range(dec_layers))
        self.out_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, mask_dim))

    def _predict(self, q: torch.Tensor, mask_features: torch.Tensor, attn_size: tuple[int, int]):
        q = self.out_norm(q)
        class_logits = self.class_embed(q)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(q), mask_features)
        # attention mask for the next layer: attend only where the current mask is > 0.5
        small = F.interpolate(mask_logits, size=attn_size, mode="bilinear", align_corners=False)
        blocked = (small.sigmoid() < 0.5).flatten(2)
        blocked[blocked.all(-1)] = False  # a query with an empty mask attends everywhere
        blocked = blocked.repeat_interleave(self.heads, dim=0).detach()
        return class_logits, mask_logits, blocked

    def forward(self, levels: Sequence[torch.Tensor]) -> dict[str, torch.Tensor | list]:
        """Levels high-res first -> ``{"class_logits": (B, N, K+1), "mask_logits": (B, N, H/4, W/4),
        "aux": [(class_logits, mask_logits) per earlier layer]}``."""
        mask_features, memories = self.pixel_decoder(levels)
        batch = mask_features.shape[0]
        mems, poss, sizes = [], [], []
        for i, mem in enumerate(memories):
            h, w = mem.shape[-2:]
            sizes.append((h, w))
            mems.append(mem.flatten(2).transpose(1, 2) + self.level_embed.weight[i])
            poss.append(sine_position_embedding(h, w, mem.shape[1], mem.device, mem.dtype)[None].expand(batch, -1, -1))
        q = self.query_feat.weight[None].expand(batch, -1, -1)
        qpos = self.query_pos.weight[None].expand(batch, -1, -1)
        preds = []
        cls, masks, blocked = self._predict(q, mask_features, sizes[0])
        preds.append((cls, masks))
        for i, layer in enumerate(self.layers):
            level = i % 3
            q = layer(q, qpos, mems[level], poss[level], blocked)
            cls, masks, blocked = self._predict(q, mask_features, sizes[(i + 1) % 3])
            preds.append((cls, masks))
        return {"class_logits": preds[-1][0], "mask_logits": preds[-1][1], "aux": preds[:-1]}

    @staticmethod
    def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """``(B, N, K+1)``, ``(B, N, h, w)`` -> per-class scores ``(B, K, h, w)`` (sum over
        queries of p(class) * sigmoid(mask), Mask2Former's semantic inference)."""
        probs = class_logits.softmax(-1)[..., :-1]
        return torch.einsum("bqk,bqhw->bkhw", probs, mask_logits.sigmoid())
