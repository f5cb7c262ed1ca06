"""Load Meta-format DINOv2 checkpoints (``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth``) into transformers.

Why: the rest of the plugin runs DINOv2 through transformers' ``Dinov2Model`` /
``Dinov2WithRegistersModel``, but many users only have Meta's original ``.pth`` files (or
their own fine-tuned teacher checkpoints in the same layout). Everything is read from tensor
shapes, never from the file name, so renamed or fine-tuned files load the same way.

Meta layout (per block ``i``; FSDP-chunked checkpoints use ``blocks.{chunk}.{i}.``)::

    cls_token, pos_embed, mask_token, register_tokens (reg variants),
    patch_embed.proj.{weight,bias},
    blocks.{i}.norm1.*, blocks.{i}.attn.qkv.*, blocks.{i}.attn.proj.*, blocks.{i}.ls1.gamma,
    blocks.{i}.norm2.*, blocks.{i}.mlp.fc1.* / fc2.*  (giant: mlp.w12.* / mlp.w3.*),
    blocks.{i}.ls2.gamma, norm.*
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    PreTrainedModel,
)

from .meta_checkpoint import assign_converted, default_layer_scales, read_meta_state_dict, split_fused_qkv
from .meta_checkpoint import sample_keys as _sample_keys
from .pos_embed import use_meta_pos_interpolation

logger = logging.getLogger(__name__)

__all__ = ["infer_dinov2_config", "convert_meta_dinov2_state_dict", "load_meta_dinov2"]

# Meta's DINOv2 ViTs all use 64-dim attention heads (S: 6, B: 12, L: 16, g: 24 heads).
_HEAD_DIM = 64
# Meta builds every DINOv2 LayerNorm with eps=1e-6.
_LAYER_NORM_EPS = 1e-6
_REQUIRED_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight")
_EXPECTED_LAYOUT = (
    "a DINOv2 checkpoint has 'cls_token', 'pos_embed', 'patch_embed.proj.weight', "
    "'blocks.<i>.attn.qkv.weight', 'blocks.<i>.mlp.fc1.weight' (or 'mlp.w12.weight'), 'norm.weight'"
)

_CHUNKED_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")

# Per-block renames that are a plain copy.
_BLOCK_RENAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "mlp.w3.weight": "mlp.down_proj.weight",
    "mlp.w3.bias": "mlp.down_proj.bias",
    "ls2.gamma": "layer_scale2.lambda1",
}
_TOP_RENAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "mask_token": "embeddings.mask_token",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}


def _unchunk(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rewrite FSDP-chunked ``blocks.{chunk}.{i}.x`` keys to ``blocks.{i}.x``.

    Meta pads each chunk with parameter-free ``nn.Identity`` so ``i`` is already the global
    block index; only the chunk number is dropped.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = _CHUNKED_BLOCK.match(key)
        new_key = f"blocks.{m.group(2)}.{m.group(3)}" if m else key
        if new_key in out:
            raise ValueError(f"duplicate block key after un-chunking: {new_key!r}")
        out[new_key] = value
    return out


def _check_family(state_dict: Mapping[str, Any]) -> None:
    missing = [k for k in _REQUIRED_KEYS if k not in state_dict]
    has_blocks = any(_BLOCK.match(k) for k in state_dict)
    if missing or not has_blocks:
        what = ", ".join(missing + ([] if has_blocks else ["blocks.<i>.*"]))
        raise ValueError(
            f"not a Meta DINOv2 state dict: missing {what}; found keys {_sample_keys(state_dict.keys())}; "
            f"{_EXPECTED_LAYOUT}"
        )


def _swiglu_mlp_ratio(hidden_size: int, swiglu_hidden: int) -> int:
    """Find the integer ``mlp_ratio`` whose SwiGLU rounding gives ``swiglu_hidden``.

    Both Meta's ``SwiGLUFFNFused`` and transformers' ``Dinov2SwiGLUFFN`` size the layer as
    ``(int(hidden_size * mlp_ratio * 2 / 3) + 7) // 8 * 8``; transformers' config only takes
    an integer ratio, so we search for it rather than storing the width directly.
    """
    for ratio in range(1, 33):
        if (int(int(hidden_size * ratio) * 2 / 3) + 7) // 8 * 8 == swiglu_hidden:
            return ratio
    raise ValueError(
        f"SwiGLU hidden width {swiglu_hidden} for hidden size {hidden_size} matches no integer mlp_ratio; "
        "transformers' Dinov2Config cannot represent it"
    )


def infer_dinov2_config(state_dict: Mapping[str, Tensor]) -> Dinov2Config | Dinov2WithRegistersConfig:
    """Build the transformers config of a Meta DINOv2 state dict from its tensor shapes.

    Returns a ``Dinov2WithRegistersConfig`` when the checkpoint has ``register_tokens``,
    otherwise a ``Dinov2Config``. Raises ``ValueError`` for state dicts of another family.
    """
    sd = _unchunk(state_dict)
    _check_family(sd)

    proj_w = sd["patch_embed.proj.weight"]
    hidden_size, num_channels, patch_h, patch_w = (int(s) for s in proj_w.shape)
    if patch_h != patch_w:
        raise ValueError(f"non-square patches {patch_h}x{patch_w} are not supported by transformers' Dinov2")
    patch_size = patch_h
    if hidden_size % _HEAD_DIM:
        raise ValueError(f"hidden size {hidden_size} is not a multiple of DINOv2's head dim {_HEAD_DIM}")

    pos = sd["pos_embed"]
    num_pos = int(pos.shape[1]) - 1  # minus the CLS position; registers have no position
    side = math.isqrt(num_pos)
    if side * side != num_pos:
        raise ValueError(f"pos_embed {tuple(pos.shape)} does not hold a square patch grid after the CLS position")

    block_ids = sorted({int(m.group(1)) for m in map(_BLOCK.match, sd) if m})
    num_layers = len(block_ids)
    if block_ids != list(range(num_layers)):
        raise ValueError(f"block indices are not contiguous from 0: {block_ids}")

    b0 = "blocks.0."
    if f"{b0}mlp.w12.weight" in sd:
        use_swiglu = True
        mlp_ratio = _swiglu_mlp_ratio(hidden_size, int(sd[f"{b0}mlp.w12.weight"].shape[0]) // 2)
    elif f"{b0}mlp.fc1.weight" in sd:
        use_swiglu = False
        inter = int(sd[f"{b0}mlp.fc1.weight"].shape[0])
        if inter % hidden_size:
            raise ValueError(f"MLP width {inter} is not an integer multiple of hidden size {hidden_size}")
        mlp_ratio = inter // hidden_size
    else:
        found = _sample_keys(k for k in sd if k.startswith(b0))
        raise ValueError(f"block 0 has neither mlp.fc1.weight nor mlp.w12.weight; found {found}")

    common: dict[str, Any] = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // _HEAD_DIM,
        mlp_ratio=mlp_ratio,
        hidden_act="gelu",
        layer_norm_eps=_LAYER_NORM_EPS,
        image_size=side * patch_size,
        patch_size=patch_size,
        num_channels=num_channels,
        qkv_bias=f"{b0}attn.qkv.bias" in sd,
        # Meta stores trained gammas; 1.0 only matters for checkpoints without LayerScale.
        layerscale_value=1.0,
        use_swiglu_ffn=use_swiglu,
    )
    if "register_tokens" in sd:
        return Dinov2WithRegistersConfig(num_register_tokens=int(sd["register_tokens"].shape[1]), **common)
    return Dinov2Config(use_mask_token="mask_token" in sd, **common)


def convert_meta_dinov2_state_dict(
    state_dict: Mapping[str, Tensor], config: Dinov2Config | Dinov2WithRegistersConfig
) -> dict[str, Tensor]:
    """Map a Meta DINOv2 state dict to the key names of transformers' ``Dinov2Model``/``...WithRegistersModel``.

    Pure: the input is not modified. Fused ``qkv`` is split into ``q_proj/k_proj/v_proj``
    and SwiGLU ``w12`` into ``gate_proj`` (first half, goes through SiLU) and ``up_proj``;
    ``w3`` becomes ``down_proj``. Blocks without LayerScale get all-ones ``lambda1``
    (an identity, since transformers always has the layer). Unknown keys raise ``ValueError``
    rather than being dropped silently.
    """
    sd = _unchunk(state_dict)
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
        prefix = f"encoder.layer.{int(m.group(1))}."
        rest = m.group(2)
        if rest in _BLOCK_RENAMES:
            out[prefix + _BLOCK_RENAMES[rest]] = value
        elif rest in ("attn.qkv.weight", "attn.qkv.bias"):
            out.update(split_fused_qkv(prefix, key, value, hidden))
        elif rest in ("mlp.w12.weight", "mlp.w12.bias"):
            kind = rest.rsplit(".", 1)[1]
            # Meta: x1, x2 = w12(x).chunk(2); silu(x1) * x2 -> x1 is the gate.
            gate, up = value.chunk(2, dim=0)
            out[f"{prefix}mlp.gate_proj.{kind}"] = gate.clone()
            out[f"{prefix}mlp.up_proj.{kind}"] = up.clone()
        else:
            unknown.append(key)

    if unknown:
        raise ValueError(f"unexpected keys in Meta DINOv2 state dict: {_sample_keys(unknown)}")

    dtype = out["embeddings.cls_token"].dtype if "embeddings.cls_token" in out else torch.float32
    default_layer_scales(out, "encoder.layer.", int(config.num_hidden_layers), hidden, dtype)
    return out


def load_meta_dinov2(path: str | Path, *, meta_pos_interp: bool = True) -> PreTrainedModel:
    """Load a Meta-format DINOv2 ``.pth`` as a transformers ``Dinov2Model`` (or ``Dinov2WithRegistersModel``).

    Plain DINOv2 models get Meta's position-embedding interpolation
    (:func:`sam2_vitplug.encoders.pos_embed.use_meta_pos_interpolation`) so that non-518 px
    inputs give the features the checkpoint was trained/evaluated with. The model is
    returned in eval mode on CPU in the checkpoint's dtype. ``meta_pos_interp=False`` keeps
    transformers' own interpolation instead.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a torch checkpoint, is not a DINOv2 state dict, or its
            converted weights do not fit the inferred model (missing/unexpected keys listed).
    """
    path = Path(path)
    found = read_meta_state_dict(path)
    if found.family.name != "dino":
        raise ValueError(f"{path} is a Meta {found.family.title} checkpoint, not DINOv2; load it with "
                         "sam2_vitplug.encoders.load_encoder, which converts every Meta family")
    return build_meta_dinov2(found.tensors, path, meta_pos_interp=meta_pos_interp)


def build_meta_dinov2(sd: Mapping[str, Tensor], path: Path, *, meta_pos_interp: bool = True) -> PreTrainedModel:
    """The transformers model of a DINOv2 state dict already read from ``path`` (see :func:`load_meta_dinov2`)."""
    try:
        config = infer_dinov2_config(sd)
        converted = convert_meta_dinov2_state_dict(sd, config)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc

    is_registers = isinstance(config, Dinov2WithRegistersConfig)
    if is_registers and "embeddings.mask_token" not in converted:
        # transformers' register model always has a mask token; it is only used with masks.
        dtype = converted["embeddings.cls_token"].dtype
        converted["embeddings.mask_token"] = torch.zeros(1, config.hidden_size, dtype=dtype)
    config._name_or_path = str(path)

    model_cls = Dinov2WithRegistersModel if is_registers else Dinov2Model
    model = assign_converted(model_cls, config, converted, path, "DINOv2")

    if meta_pos_interp and not is_registers:
        use_meta_pos_interpolation(model.embeddings)
    logger.info(
        "loaded Meta DINOv2 %s from %s: hidden=%d layers=%d heads=%d patch=%d image=%d swiglu=%s registers=%d",
        model_cls.__name__,
        path,
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.patch_size,
        config.image_size,
        config.use_swiglu_ffn,
        getattr(config, "num_register_tokens", 0),
    )
    return model
