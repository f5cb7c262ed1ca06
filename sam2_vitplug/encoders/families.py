"""Encoder families: how each kind of ViT is run and where its tokens live.

Each family object is published as one entry point in the ``sam2_vitplug.encoders``
group (see setup.py); the registry reads that group, so a third-party package adds an
encoder type by declaring its own ``EncoderFamily`` entry point. Facts that differ between
families (prefix tokens, position-embedding rule, module paths) are recorded here as data,
never derived from substrings of model names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .presets import DEMO_PRESETS, DINOV2_PRESETS, DINOV3_PRESETS, IJEPA_PRESETS, EncoderPreset


def _get_attr_path(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


@dataclass(frozen=True)
class EncoderFamily:
    """What the trunk needs to know to run one family of transformers ViTs.

    Attributes:
        name: the encoder type (``dino``, ``dinov3``, ...), equal to its entry-point name.
        description: one line for ``sam2-vitplug info``.
        model_types: accepted ``config.model_type`` values; empty means any.
        cls_tokens: CLS tokens in front of the sequence (0 for I-JEPA). Register tokens are
            read from ``config.num_register_tokens`` and come after the CLS token.
        blocks_path: attribute path of the transformer blocks (an ``nn.ModuleList``); several
            candidates may be given separated by ``|`` (the first one the model has wins).
        norm_path: attribute path of the final norm, applied to intermediate taps too.
        forward_kwargs: extra keyword arguments for ``model(pixel_values, ...)``.
        meta_pos_interp_model_types: model types whose checkpoints were trained with Meta's
            DINOv2 position-embedding interpolation (see ``encoders/pos_embed.py``).
        meta_checkpoint: whether Meta-format checkpoints of this family are converted (each
            conversion is verified against Meta's own outputs, tests/test_meta_reference.py).
        upstream: True for ``hiera``: the upstream SAM2 trunk, left untouched.
        unused_params: parameter-name prefixes the trunk's forward never uses (mask tokens
            for masked pre-training, poolers). The trunk sets ``requires_grad=False`` on them so
            DDP sees no unused trainable parameter.
        presets: named weights of this family.
        train_augmentation_modules: submodules that draw random input augmentations in train
            mode (DINOv3's RoPE shift/jitter/rescale); the trunk keeps them in eval mode unless
            its ``train_augmentation`` option is on.
    """

    name: str
    description: str
    model_types: tuple[str, ...] = ()
    cls_tokens: int = 1
    blocks_path: str = "encoder.layer"
    norm_path: str = "layernorm"
    forward_kwargs: tuple[tuple[str, Any], ...] = ()
    meta_pos_interp_model_types: tuple[str, ...] = ()
    meta_checkpoint: bool = False
    upstream: bool = False
    unused_params: tuple[str, ...] = ("embeddings.mask_token",)
    presets: tuple[EncoderPreset, ...] = field(default_factory=tuple)
    train_augmentation_modules: tuple[str, ...] = ()

    def accepts(self, model_type: str) -> bool:
        return not self.model_types or model_type in self.model_types

    def num_prefix_tokens(self, config: Any) -> int:
        return self.cls_tokens + int(getattr(config, "num_register_tokens", 0) or 0)

    def resolve_blocks_path(self, model: nn.Module) -> str:
        """The candidate of ``blocks_path`` that ``model`` has."""
        for path in self.blocks_path.split("|"):
            try:
                _get_attr_path(model, path)
            except AttributeError:
                continue
            return path
        raise AttributeError(
            f"{type(model).__name__} has none of the block lists {self.blocks_path!r} that encoder type "
            f"'{self.name}' expects; is this the right encoder_type?"
        )

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return _get_attr_path(model, self.resolve_blocks_path(model))

    def final_norm(self, model: nn.Module) -> nn.Module:
        return _get_attr_path(model, self.norm_path)


DINOV2 = EncoderFamily(
    name="dino",
    description="DINOv2 ViTs (patch 14), with or without registers",
    model_types=("dinov2", "dinov2_with_registers"),
    meta_pos_interp_model_types=("dinov2",),
    meta_checkpoint=True,
    presets=DINOV2_PRESETS + DEMO_PRESETS,
)

DINOV3 = EncoderFamily(
    name="dinov3",
    description="DINOv3 ViTs (patch 16, 4 registers, RoPE)",
    model_types=("dinov3_vit",),
    blocks_path="model.layer",
    norm_path="norm",
    meta_checkpoint=True,
    presets=DINOV3_PRESETS,
    train_augmentation_modules=("rope_embeddings",),
)

IJEPA = EncoderFamily(
    name="ijepa",
    description="I-JEPA ViTs (no CLS token)",
    model_types=("ijepa",),
    cls_tokens=0,
    blocks_path="layers",
    forward_kwargs=(("interpolate_pos_encoding", True),),
    meta_checkpoint=True,
    presets=IJEPA_PRESETS,
)

GENERIC_VIT = EncoderFamily(
    name="vit",
    description="any transformers ViT with one CLS token (ViTModel and alike)",
    model_types=(),
    blocks_path="layers|encoder.layer",
    forward_kwargs=(("interpolate_pos_encoding", True),),
    unused_params=("embeddings.mask_token", "pooler."),
)

HIERA = EncoderFamily(
    name="hiera",
    description="upstream SAM2 Hiera trunk, untouched (use sam2's own configs)",
    upstream=True,
)
