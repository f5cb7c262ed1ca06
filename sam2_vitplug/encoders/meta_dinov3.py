"""Meta-format DINOv3 checkpoints (``dinov3_vit{s16,s16plus,b16,l16,h16plus,7b16}_pretrain_*.pth``) -> transformers.

Why: users of Meta's DINOv3 release hold ``.pth`` state dicts of Meta's own
``DinoVisionTransformer``; the plugin runs DINOv3 as transformers' ``DINOv3ViTModel``. The
architecture is read from the tensors, never from the file name, so every released size
(including the SwiGLU ``*plus`` models, the satellite ``sat493m`` files and 7B) loads.

Meta layout (per block ``i``)::

    cls_token (1,1,C), storage_tokens (1,R,C), mask_token (1,C), patch_embed.proj.{weight,bias},
    rope_embed.periods (head_dim/4,), blocks.{i}.norm1.*, blocks.{i}.attn.qkv.{weight,bias,bias_mask},
    blocks.{i}.attn.proj.*, blocks.{i}.ls1.gamma, blocks.{i}.norm2.*,
    blocks.{i}.mlp.fc1/fc2.* (MLP) or blocks.{i}.mlp.w1/w2/w3.* (SwiGLU), blocks.{i}.ls2.gamma,
    norm.*, local_cls_norm.* (training only; 7B and ViT-L sat493m)
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor
from transformers import DINOv3ViTConfig, DINOv3ViTModel, PreTrainedModel

from .meta_checkpoint import assign_converted, default_layer_scales, sample_keys, split_fused_qkv

logger = logging.getLogger(__name__)

__all__ = ["infer_dinov3_config", "convert_meta_dinov3_state_dict", "build_meta_dinov3"]

# Meta's hub constructors build every released DINOv3 ViT with norm_layer="layernormbf16",
# i.e. nn.LayerNorm(eps=1e-5).
_LAYER_NORM_EPS = 1e-5
# Hub constructors: img_size=224 and pos_embed_rope_rescale_coords=2 (a training-mode
# augmentation; nothing in the file records it).
_IMAGE_SIZE = 224
_ROPE_RESCALE = 2.0
# Relative agreement required between the file's RoPE periods and base ** (i / n) with the
# inferred base: fp32 rounding of Meta's own computation is ~1e-7.
_ROPE_RTOL = 1e-5

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_DROPPED = ("rope_embed.periods",)  # read into the config (rope_theta, head dim)
_TOP_RENAMES = {
    "cls_token": "embeddings.cls_token",
    "storage_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_BLOCK_RENAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1.weight": "mlp.up_proj.weight",
    "mlp.fc1.bias": "mlp.up_proj.bias",
    "mlp.fc2.weight": "mlp.down_proj.weight",
    "mlp.fc2.bias": "mlp.down_proj.bias",
    # Meta's SwiGLUFFN: w3(silu(w1(x)) * w2(x)); transformers: down(act(gate(x)) * up(x)).
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w1.bias": "mlp.gate_proj.bias",
    "mlp.w2.weight": "mlp.up_proj.weight",
    "mlp.w2.bias": "mlp.up_proj.bias",
    "mlp.w3.weight": "mlp.down_proj.weight",
    "mlp.w3.bias": "mlp.down_proj.bias",
}


def _rope_theta(periods: Tensor) -> float:
    """The RoPE base whose ``base ** (i / n)`` (transformers' rule) gives Meta's ``periods``.

    The tolerance follows the stored dtype (a bf16 file holds periods to ~3 digits); a base that
    close to an integer is taken as that integer (Meta's hub models all use 100).
    """
    rtol = max(_ROPE_RTOL, 2 * torch.finfo(periods.dtype).eps) if periods.is_floating_point() else _ROPE_RTOL
    p = periods.detach().double().cpu()
    n = p.numel()
    if n < 2 or abs(float(p[0]) - 1.0) > rtol:
        raise ValueError(
            f"rope_embed.periods starts at {float(p[0]):.6g}, not 1: the file uses min/max-period RoPE, which "
            "transformers' DINOv3ViTModel (base ** (i/n) periods) cannot represent"
        )
    frac = torch.arange(1, n, dtype=torch.float64) / n  # least squares of log p_i = frac_i * log(base)
    base = math.exp(float((frac * p[1:].log()).sum() / (frac * frac).sum()))
    if abs(round(base) - base) <= rtol * base * n:
        base = float(round(base))
    want = base ** (torch.arange(n, dtype=torch.float64) / n)
    if not torch.allclose(p, want, rtol=rtol, atol=0.0):
        raise ValueError(
            f"rope_embed.periods {p.tolist()[:4]}... are not base ** (i/n) for any base (closest {base:g}); "
            "transformers' DINOv3ViTModel cannot represent this RoPE"
        )
    return base


def _check_supported(sd: Mapping[str, Tensor]) -> None:
    cls_norm = [k for k in sd if k.startswith("cls_norm.")]
    if cls_norm:
        raise ValueError(
            f"the file has {', '.join(cls_norm)}: a model trained with untie_cls_and_patch_norms normalises CLS and "
            "storage tokens with their own norm, which transformers' DINOv3ViTModel cannot represent; "
            "this checkpoint cannot be converted"
        )


def infer_dinov3_config(sd: Mapping[str, Tensor]) -> DINOv3ViTConfig:
    """The ``DINOv3ViTConfig`` of a Meta DINOv3 state dict, from its tensor shapes alone."""
    _check_supported(sd)
    hidden, channels, patch_h, patch_w = (int(s) for s in sd["patch_embed.proj.weight"].shape)
    if patch_h != patch_w:
        raise ValueError(f"non-square patches {patch_h}x{patch_w} are not supported by DINOv3ViTModel")
    head_dim = 4 * int(sd["rope_embed.periods"].numel())  # Meta stores head_dim / 4 periods
    if hidden % head_dim:
        raise ValueError(f"hidden size {hidden} is not a multiple of the RoPE head dim {head_dim}")
    block_ids = sorted({int(m.group(1)) for m in map(_BLOCK.match, sd) if m})
    if block_ids != list(range(len(block_ids))):
        raise ValueError(f"block indices are not contiguous from 0: {block_ids}")
    b0 = "blocks.0."
    gated = f"{b0}mlp.w1.weight" in sd
    up = f"{b0}mlp.w1.weight" if gated else f"{b0}mlp.fc1.weight"
    if up not in sd:
        raise ValueError(f"block 0 has neither mlp.fc1.weight nor mlp.w1.weight; found "
                         f"{sample_keys(k for k in sd if k.startswith(b0))}")
    qkv_bias = f"{b0}attn.qkv.bias" in sd
    config = DINOv3ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=len(block_ids),
        num_attention_heads=hidden // head_dim,
        intermediate_size=int(sd[up].shape[0]),
        patch_size=patch_h,
        num_channels=channels,
        image_size=_IMAGE_SIZE,
        # Meta's Mlp uses GELU, its SwiGLUFFN SiLU: the gate activation must be silu.
        hidden_act="silu" if gated else "gelu",
        use_gated_mlp=gated,
        layer_norm_eps=_LAYER_NORM_EPS,
        rope_theta=_rope_theta(sd["rope_embed.periods"]),
        query_bias=qkv_bias,
        key_bias=_uses_key_bias(sd, hidden),  # released files mask it (bias_mask 1/0/1): False
        value_bias=qkv_bias,
        proj_bias=f"{b0}attn.proj.bias" in sd,
        mlp_bias=f"{up[:-len('weight')]}bias" in sd,
        layerscale_value=1.0,  # trained gammas are loaded; 1.0 only matters for files without LayerScale
        num_register_tokens=int(sd["storage_tokens"].shape[1]) if "storage_tokens" in sd else 0,
        pos_embed_shift=None,
        pos_embed_jitter=None,
        pos_embed_rescale=_ROPE_RESCALE,
    )
    return config


def _uses_key_bias(sd: Mapping[str, Tensor], hidden: int) -> bool:
    """Whether Meta's forward adds the k third of ``qkv.bias``: read from ``qkv.bias_mask`` (released
    files: 1/0/1, ``mask_k_bias=True``); a file without a mask (``mask_k_bias=False``) uses it.

    The k bias matters here: RoPE rotates it per position, so it is not a per-row softmax constant.
    Masks other than all-ones / all-zeros per third, or that differ between blocks, cannot be
    represented (DINOv3ViTModel has one q/k/v bias switch each) and are refused.
    """
    masks = {k: v for k, v in sd.items() if k.endswith("attn.qkv.bias_mask")}
    biases = [k for k in sd if k.endswith("attn.qkv.bias")]
    if not biases:
        return False
    if not masks:
        return True
    uses = set()
    for key in biases:
        mask = masks.get(key + "_mask")
        if mask is None:
            raise ValueError(f"{key} has no {key}_mask while other blocks have one; the file is inconsistent")
        q, k, v = mask.reshape(3, hidden)
        if not (bool((q == 1).all()) and bool((v == 1).all()) and (bool((k == 0).all()) or bool((k == 1).all()))):
            raise ValueError(f"{key}_mask is not 1/0/1 (or 1/1/1) over q/k/v: this file's attention biases are "
                             "masked in a way DINOv3ViTModel (one q, k, v bias switch each) cannot represent")
        uses.add(bool((k == 1).all()))
    if len(uses) > 1:
        raise ValueError("qkv.bias_mask masks the key bias in some blocks only; DINOv3ViTModel cannot represent it")
    return uses.pop()


def convert_meta_dinov3_state_dict(sd: Mapping[str, Tensor], config: DINOv3ViTConfig) -> dict[str, Tensor]:
    """Meta DINOv3 key names and shapes -> ``DINOv3ViTModel``'s. Pure; unknown keys raise ValueError."""
    _check_supported(sd)
    hidden = int(config.hidden_size)
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if key in _DROPPED or key.startswith("local_cls_norm.") or key.endswith("attn.qkv.bias_mask"):
            continue  # local_cls_norm normalises local crops in training only; bias_mask read into key_bias
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
        elif key == "mask_token":
            out["embeddings.mask_token"] = value.reshape(1, 1, hidden)
        elif m := _BLOCK.match(key):
            prefix, rest = f"model.layer.{int(m.group(1))}.", m.group(2)
            if rest in _BLOCK_RENAMES:
                out[prefix + _BLOCK_RENAMES[rest]] = value
            elif rest in ("attn.qkv.weight", "attn.qkv.bias"):
                # a masked k bias (checked in _uses_key_bias) is dropped
                out.update(split_fused_qkv(prefix, key, value, hidden, key_bias=bool(config.key_bias)))
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys in Meta DINOv3 state dict: {sample_keys(unknown)}")
    dtype = out["embeddings.cls_token"].dtype
    out.setdefault("embeddings.mask_token", torch.zeros(1, 1, hidden, dtype=dtype))
    out.setdefault("embeddings.register_tokens", torch.zeros(1, 0, hidden, dtype=dtype))
    default_layer_scales(out, "model.layer.", int(config.num_hidden_layers), hidden, dtype)
    return out


def build_meta_dinov3(sd: Mapping[str, Tensor], path: Path) -> PreTrainedModel:
    """The ``DINOv3ViTModel`` (eval mode, CPU, the file's dtype) of a Meta DINOv3 state dict read from ``path``."""
    try:
        config = infer_dinov3_config(sd)
        converted = convert_meta_dinov3_state_dict(sd, config)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    config._name_or_path = str(path)
    # rope_embeddings holds only the non-persistent inv_freq buffer, so it is rebuilt from rope_theta.
    model = assign_converted(DINOv3ViTModel, config, converted, path, "DINOv3", rebuild=("rope_embeddings",))
    logger.info(
        "loaded Meta DINOv3 from %s: hidden=%d layers=%d heads=%d patch=%d registers=%d gated_mlp=%s "
        "intermediate=%d rope_theta=%g",
        path, config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.patch_size,
        config.num_register_tokens, config.use_gated_mlp, config.intermediate_size, config.rope_theta,
    )
    return model

