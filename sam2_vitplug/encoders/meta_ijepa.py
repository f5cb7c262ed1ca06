"""Meta-format I-JEPA encoders (``IN1K-vit.h.14-300e.pth.tar``, ``IN22K-vit.g.16-600e.pth.tar``) -> transformers.

Why: Meta releases I-JEPA as training checkpoints (``encoder``, ``target_encoder``,
``predictor``, optimizer state, ...; see :mod:`sam2_vitplug.encoders.meta_checkpoint` for how
one encoder is picked). The plugin runs I-JEPA as transformers' ``IJepaModel``; the
architecture is read from the tensors.

Meta layout (per block ``i``, after the DDP ``module.`` prefix is stripped)::

    pos_embed (1, N, C) (fixed 2-D sin-cos table, no CLS entry), patch_embed.proj.{weight,bias},
    blocks.{i}.norm1.*, blocks.{i}.attn.qkv.*, blocks.{i}.attn.proj.*, blocks.{i}.norm2.*,
    blocks.{i}.mlp.fc1.*, blocks.{i}.mlp.fc2.*, norm.*
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Mapping

from torch import Tensor
from transformers import IJepaConfig, IJepaModel, PreTrainedModel

from .meta_checkpoint import assign_converted, sample_keys, split_fused_qkv

logger = logging.getLogger(__name__)

__all__ = ["infer_ijepa_config", "convert_meta_ijepa_state_dict", "build_meta_ijepa"]

# Meta's I-JEPA builds every LayerNorm as partial(nn.LayerNorm, eps=1e-6) (src/models/vision_transformer.py).
_LAYER_NORM_EPS = 1e-6
# A checkpoint does not store the head count. Meta's constructors use 64-dim heads from vit_tiny to
# vit_large and 16 heads for vit_huge (1280 = 16 x 80) and vit_giant (1408 = 16 x 88).
_HEAD_DIM = 64
_SIXTEEN_HEAD_WIDTHS = (1280, 1408)

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_TOP_RENAMES = {
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_BLOCK_RENAMES = {
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}


def ijepa_num_heads(hidden: int) -> int:
    """Meta's head count for an I-JEPA ViT of width ``hidden`` (not stored in the file)."""
    if hidden in _SIXTEEN_HEAD_WIDTHS:
        return 16
    if hidden % _HEAD_DIM:
        raise ValueError(f"I-JEPA width {hidden} is neither ViT-H/G (16 heads) nor a multiple of the 64-dim heads "
                         "Meta uses for smaller models; the head count cannot be inferred")
    return hidden // _HEAD_DIM


def infer_ijepa_config(sd: Mapping[str, Tensor]) -> IJepaConfig:
    """The ``IJepaConfig`` of a Meta I-JEPA encoder state dict, from its tensor shapes alone."""
    hidden, channels, patch_h, patch_w = (int(s) for s in sd["patch_embed.proj.weight"].shape)
    if patch_h != patch_w:
        raise ValueError(f"non-square patches {patch_h}x{patch_w} are not supported by IJepaModel")
    num_pos = int(sd["pos_embed"].shape[1])
    side = math.isqrt(num_pos)
    if side * side != num_pos:
        raise ValueError(f"pos_embed {tuple(sd['pos_embed'].shape)} does not hold a square patch grid")
    block_ids = sorted({int(m.group(1)) for m in map(_BLOCK.match, sd) if m})
    if block_ids != list(range(len(block_ids))):
        raise ValueError(f"block indices are not contiguous from 0: {block_ids}")
    fc1 = "blocks.0.mlp.fc1.weight"
    if fc1 not in sd:
        found = sample_keys(k for k in sd if k.startswith("blocks.0."))
        raise ValueError(f"block 0 has no mlp.fc1.weight; found {found}")
    return IJepaConfig(
        hidden_size=hidden,
        num_hidden_layers=len(block_ids),
        num_attention_heads=ijepa_num_heads(hidden),
        intermediate_size=int(sd[fc1].shape[0]),
        hidden_act="gelu",
        layer_norm_eps=_LAYER_NORM_EPS,
        image_size=side * patch_h,
        patch_size=patch_h,
        num_channels=channels,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
    )


def convert_meta_ijepa_state_dict(sd: Mapping[str, Tensor], config: IJepaConfig) -> dict[str, Tensor]:
    """Meta I-JEPA key names -> ``IJepaModel``'s (fused qkv split). Pure; unknown keys raise ValueError."""
    hidden = int(config.hidden_size)
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
            continue
        m = _BLOCK.match(key)
        if not m:
            unknown.append(key)
            continue
        prefix, rest = f"layers.{int(m.group(1))}.", m.group(2)
        if rest in _BLOCK_RENAMES:
            out[prefix + _BLOCK_RENAMES[rest]] = value
        elif rest in ("attn.qkv.weight", "attn.qkv.bias"):
            out.update(split_fused_qkv(prefix, key, value, hidden))
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys in Meta I-JEPA state dict: {sample_keys(unknown)}")
    return out


def build_meta_ijepa(sd: Mapping[str, Tensor], path: Path, picked: str | None) -> PreTrainedModel:
    """The ``IJepaModel`` (eval mode, CPU, the file's dtype) of a Meta I-JEPA encoder read from ``path``."""
    try:
        config = infer_ijepa_config(sd)
        converted = convert_meta_ijepa_state_dict(sd, config)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    config._name_or_path = f"{path}#{picked}" if picked else str(path)
    model = assign_converted(IJepaModel, config, converted, path, "I-JEPA")
    logger.info("loaded Meta I-JEPA %s from %s: hidden=%d layers=%d heads=%d patch=%d image=%d",
                picked or "encoder state dict", path, config.hidden_size, config.num_hidden_layers,
                config.num_attention_heads, config.patch_size, config.image_size)
    return model
