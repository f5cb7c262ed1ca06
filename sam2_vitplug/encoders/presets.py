"""Named encoder presets: data only, no behaviour.

A preset records where a model's weights live (hub id and revision), what it expects as
input, and the architecture numbers needed to build the same geometry with random weights
(benchmarks, ``random_init=True``, tests that must run offline). When real weights are
loaded, the checkpoint's own ``config.json`` is authoritative and ``arch`` is not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderPreset:
    """One named, loadable encoder (``dinov2_large``, ``dinov3_small``, ...).

    Attributes:
        name: the short name users type.
        encoder_type: the family (entry-point name in ``sam2_vitplug.encoders``).
        hf_id: Hugging Face hub id of the weights.
        model_type: transformers ``config.model_type`` of the weights.
        arch: transformers config kwargs that reproduce the architecture offline.
        native_size: the pre-training resolution in pixels.
        revision: optional hub revision to pin.
        mean, std: the pixel normalisation the weights were trained with.
        license: the weights' license, as published.
        package_file: weights shipped inside the ``sam2_vitplug`` package (path relative to it,
            safetensors) instead of on the hub; ``hf_id`` is then empty.
        key_prefix: the prefix of this encoder's tensors in ``package_file`` (a whole-model
            checkpoint holds the ViT under ``image_encoder.trunk.vit.``).
    """

    name: str
    encoder_type: str
    hf_id: str
    model_type: str
    arch: Mapping[str, Any] = field(default_factory=dict)
    native_size: int = 224
    revision: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    license: str = ""
    package_file: str | None = None
    key_prefix: str = ""

    @property
    def patch_size(self) -> int:
        return int(self.arch["patch_size"])

    @property
    def hidden_size(self) -> int:
        return int(self.arch["hidden_size"])


def _vit_arch(hidden: int, layers: int, heads: int, patch: int, **extra: Any) -> dict[str, Any]:
    arch = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "patch_size": patch,
    }
    arch.update(extra)
    return arch


# DINOv2 (patch 14, trained at 518 px with a 37x37 position grid).
# Source of every architecture number: the hub config.json of facebook/dinov2-{size} and
# facebook/dinov2-with-registers-{size}, written by transformers' convert_dinov2_to_hf.py /
# convert_dinov2_with_registers_to_hf.py (image_size 518, patch 14, S 384/12/6, B 768/12/12,
# L 1024/24/16, g 1536/40/24 with use_swiglu_ffn); mlp_ratio 4, hidden_act gelu and
# layer_norm_eps 1e-6 are Dinov2Config's defaults in those files (Meta: LayerNorm eps 1e-6).
_DINOV2_COMMON = dict(image_size=518, layerscale_value=1.0, mlp_ratio=4, hidden_act="gelu", layer_norm_eps=1e-6)
_DINOV2_SIZES = {
    "small": _vit_arch(384, 12, 6, 14),
    "base": _vit_arch(768, 12, 12, 14),
    "large": _vit_arch(1024, 24, 16, 14),
    "giant": _vit_arch(1536, 40, 24, 14, use_swiglu_ffn=True),
}

DINOV2_PRESETS = tuple(
    EncoderPreset(
        name=f"dinov2_{size}",
        encoder_type="dino",
        hf_id=f"facebook/dinov2-{size}",
        model_type="dinov2",
        arch={**arch, **_DINOV2_COMMON},
        native_size=518,
        license="Apache-2.0",
    )
    for size, arch in _DINOV2_SIZES.items()
) + tuple(
    EncoderPreset(
        name=f"dinov2_{size}_reg",
        encoder_type="dino",
        hf_id=f"facebook/dinov2-with-registers-{size}",
        model_type="dinov2_with_registers",
        arch={**arch, **_DINOV2_COMMON, "num_register_tokens": 4},
        native_size=518,
        license="Apache-2.0",
    )
    for size, arch in _DINOV2_SIZES.items()
)

# DINOv3 ViTs (patch 16, 4 register tokens, RoPE: no position grid to interpolate).
# Source: the hub config.json of facebook/dinov3-{tag}-pretrain-lvd1689m, as written by
# transformers' convert_dinov3_vit_to_hf.py (get_dinov3_config): hidden/layers/heads/
# intermediate below; MLP models hidden_act "gelu", the SwiGLU *plus models use_gated_mlp with
# hidden_act "silu" (Meta's SwiGLUFFN gates with SiLU); everything else at DINOv3ViTConfig's
# defaults there: layer_norm_eps 1e-5 (Meta "layernormbf16"), rope_theta 100 (Meta
# pos_embed_rope_base=100), query/value bias on, key bias off, layerscale, image_size 224,
# pos_embed_rescale 2.0 (Meta pos_embed_rope_rescale_coords=2). Written out so a change of
# transformers' defaults cannot change the random-init architecture.
_DINOV3_COMMON = dict(layer_norm_eps=1e-5, rope_theta=100.0, query_bias=True, key_bias=False, value_bias=True)
_DINOV3_SIZES = {
    "small": ("vits16", _vit_arch(384, 12, 6, 16, intermediate_size=1536, hidden_act="gelu", **_DINOV3_COMMON)),
    "base": ("vitb16", _vit_arch(768, 12, 12, 16, intermediate_size=3072, hidden_act="gelu", **_DINOV3_COMMON)),
    "large": ("vitl16", _vit_arch(1024, 24, 16, 16, intermediate_size=4096, hidden_act="gelu", **_DINOV3_COMMON)),
    "huge_plus": ("vith16plus", _vit_arch(1280, 32, 20, 16, intermediate_size=5120, use_gated_mlp=True,
                                          hidden_act="silu", **_DINOV3_COMMON)),
}

DINOV3_PRESETS = tuple(
    EncoderPreset(
        name=f"dinov3_{size}",
        encoder_type="dinov3",
        hf_id=f"facebook/dinov3-{tag}-pretrain-lvd1689m",
        model_type="dinov3_vit",
        arch={**arch, "num_register_tokens": 4, "image_size": 224},
        native_size=512,
        license="DINOv3 License",
    )
    for size, (tag, arch) in _DINOV3_SIZES.items()
)

# The ViT of the embedded demo model (tools/train_demo_model.py): trained here on synthetic shapes,
# shipped inside the package; it is the trunk of the sam2_vit_demo SAM2 preset and its matcher.
DEMO_PRESETS = (
    EncoderPreset(
        name="dinov2_demo",
        encoder_type="dino",
        hf_id="",
        model_type="dinov2",
        arch=_vit_arch(128, 6, 4, 14, mlp_ratio=4, image_size=518, layerscale_value=1.0),
        native_size=224,
        license="Apache-2.0 (trained here on synthetic data)",
        package_file="assets/sam2_vit_demo/model.safetensors",
        key_prefix="image_encoder.trunk.vit.",
    ),
)

# I-JEPA ViT-H/14 (no CLS token; position embeddings must be interpolated off 224 px).
# Source: the hub config.json of facebook/ijepa_vith14_1k, as written by transformers'
# convert_ijepa_to_hf.py (get_ijepa_config "vith"): 1280/32/16 heads, intermediate 5120, patch 14,
# image_size 224, layer_norm_eps 1e-6 (Meta: partial(nn.LayerNorm, eps=1e-6); IJepaConfig's own
# default is 1e-12); hidden_act gelu and qkv_bias true are IJepaConfig's defaults there.
IJEPA_PRESETS = (
    EncoderPreset(
        name="ijepa_huge14",
        encoder_type="ijepa",
        hf_id="facebook/ijepa_vith14_1k",
        model_type="ijepa",
        arch=_vit_arch(1280, 32, 16, 14, intermediate_size=5120, image_size=224, layer_norm_eps=1e-6,
                       hidden_act="gelu", qkv_bias=True),
        native_size=224,
        license="CC-BY-NC-4.0",
    ),
)
