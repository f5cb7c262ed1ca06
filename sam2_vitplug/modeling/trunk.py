"""``ViTTrunkMultiScale``: a SAM2 image-encoder trunk around a transformers ViT.

Contract with upstream ``sam2.modeling.backbones.image_encoder.ImageEncoder``:
``forward(x)`` returns four NCHW maps **high-res first** (strides 4, 8, 16, 32) and
``channel_list`` lists their channels **low-res first**; the neck's
``backbone_channel_list`` must equal it.

Geometry rule (docs/architecture.md section 2): SAM2 needs the stride-16 map to be exactly
``(H/16, W/16)``. A patch-P ViT gives that grid when fed ``(H/16*P, W/16*P)`` pixels, so the
trunk resizes its input to that size (896 px for patch 14 at 1024; nothing for patch 16).
"""

from __future__ import annotations

import re
import sys
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders import load_encoder
from ..encoders.tokens import tokens_to_grid
from ..precision import DTYPE_NAMES, DTYPES
from .pyramid import MultiScalePyramid, UpsampleMode
from .transforms import TransformSet, apply_transforms, average_maps, make_transforms

STRIDES = (4, 8, 16, 32)
GRID_STRIDE = 16

_DTYPES = {name: DTYPES[short] for name, short in DTYPE_NAMES.items()}  # precision's spellings


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """``None``/``"none"`` -> None; ``fp16``/``bf16``/``fp32`` (and long names) -> a torch dtype."""
    if value is None or isinstance(value, torch.dtype):
        return value
    key = str(value).lower()
    if key in ("none", "null", ""):
        return None
    if key not in _DTYPES:
        raise ValueError(f"force_dtype must be one of fp16, bf16, fp32 or None, got {value!r}")
    return _DTYPES[key]


def resolve_out_dims(out_dims: Any, hidden_size: int) -> list[int]:
    """Channels per level, low-res first (``[C32, C16, C8, C4]``).

    ``"auto"``/None gives ``[C, C, C/2, C/4]`` for a ViT of width C: the stride-4 map is
    the one that dominates memory (a 1024-channel stride-4 map is 268 MB per 1024 px image in
    fp32), so the high-res levels are narrower, as in Hiera's ``[8C, 4C, 2C, C]``.
    """
    if out_dims is None or (isinstance(out_dims, str) and out_dims.lower() == "auto"):
        return [hidden_size, hidden_size, max(hidden_size // 2, 1), max(hidden_size // 4, 1)]
    if isinstance(out_dims, str):
        parts = [p for p in out_dims.replace(" ", "").split(",") if p]
    else:
        parts = list(out_dims)
    try:
        dims = [int(p) for p in parts]
    except (TypeError, ValueError):
        dims = []
    if len(dims) != 4 or any(d <= 0 for d in dims) or any(str(p).strip() != str(d) for p, d in zip(parts, dims)):
        raise ValueError(
            f"out_dims must be 'auto' or 4 positive ints ordered low-res first (C32, C16, C8, C4), got {out_dims!r}"
        )
    return dims


def resolve_feature_layers(feature_layers: Any, num_layers: int) -> tuple[int, int, int, int]:
    """Which ViT layer feeds each level (s4, s8, s16, s32), as 0-based block indices.

    None -> the last layer for every level. An int n (1 or 4) -> n evenly spaced blocks ending
    at the last one (4: e.g. 5, 11, 17, 23 for 24 blocks; earlier layers feed higher
    resolutions, as in ViTDet/UPerNet). A sequence of 4 ints (negative allowed) -> those blocks.
    """
    if feature_layers is None:
        return (num_layers - 1,) * 4
    if isinstance(feature_layers, int) and not isinstance(feature_layers, bool):
        if feature_layers == 1:
            return (num_layers - 1,) * 4
        if feature_layers != 4:
            raise ValueError(f"feature_layers as an int must be 1 or 4 (evenly spaced blocks), got {feature_layers}")
        if num_layers < 4:
            raise ValueError(f"feature_layers=4 needs a ViT with at least 4 blocks; this one has {num_layers}")
        return tuple(round((i + 1) * num_layers / 4) - 1 for i in range(4))  # type: ignore[return-value]
    layers = list(feature_layers)
    if len(layers) != 4:
        raise ValueError(f"feature_layers must list 4 block indices (for strides 4, 8, 16, 32), got {feature_layers!r}")
    resolved = []
    for idx in layers:
        idx = int(idx)
        if not -num_layers <= idx < num_layers:
            raise ValueError(
                f"feature_layers index {idx} is out of range for a ViT with {num_layers} blocks "
                f"(valid: {-num_layers}..{num_layers - 1})"
            )
        resolved.append(idx % num_layers)
    return tuple(resolved)  # type: ignore[return-value]


class ViTTrunkMultiScale(nn.Module):
    """A transformers ViT (DINOv2, DINOv3, I-JEPA, any ViT) as a SAM2 multi-scale trunk.

    Args:
        pretrained: preset name, hub id, local directory, or a Meta checkpoint: DINOv2 / DINOv3
            ``.pth``, I-JEPA ``.pth.tar`` (``file.pth.tar#encoder`` for its context encoder instead
            of ``target_encoder``; quote it in a Hydra override) (see
            :func:`sam2_vitplug.encoders.load_encoder`).
        encoder_type: expected family (``dino``, ``dinov3``, ``ijepa``, ``vit``); inferred if None.
        out_dims: channels per level, low-res first ``[C32, C16, C8, C4]``, or ``"auto"``.
        upsample_mode: ``bilinear``, ``deconv`` or ``transform_avg`` for the stride 8 and 4 levels.
            ``transform_avg`` runs the ViT on ``hr_transforms`` shifted/flipped copies of the
            image in one batch and builds every level from the transform-averaged maps
            (docs/architecture.md section 5); training back-propagates through the K-image batch, so the
            ViT's cost and activation memory grow K-fold.
        refine_highres: depthwise-separable refinement on the stride 8 and 4 levels.
        freeze_vit: no gradients, eval mode and no autograd graph through the ViT; the
            pyramid still trains.
        force_dtype: ``fp16``/``bf16``/``fp32``. Rule: the ViT's weights are cast to it and the
            ViT runs in it; the pyramid keeps its own parameter dtype (fp32 unless you cast the
            model), so it stays trainable; the returned maps are cast to ``force_dtype``.
            ``sam2_vitplug.modeling.ViTFpnNeck`` casts them back to the neck's dtype.
        verbose: print the synthesized shapes (to stderr) once per input size.
        feature_layers: which blocks feed the levels (see :func:`resolve_feature_layers`).
        random_init: build the architecture with random weights (benchmarks, tests).
        pos_interp: ``meta`` (default) or ``hf`` position-embedding interpolation for
            DINOv2 weights trained with Meta's rule.
        resize_antialias: antialias the input resize when it shrinks the image (patch 14).
        hr_transforms, hr_shift, hr_directions, hr_border: the transform set of
            ``transform_avg`` (K, shift in ViT-input pixels below patch/2, 4 or 8 directions,
            ``reflect``/``periodic``); see :func:`sam2_vitplug.modeling.transforms.make_transforms`.
            Ignored by the other modes.
        train_augmentation: let the ViT draw its own random input augmentations in train mode
            (DINOv3: RoPE coordinate shift/jitter/rescale, as in its pre-training). Off by
            default: two training forwards of the same batch are then identical, as with every
            other family, and the trunk sees the geometry it is evaluated with. Eval mode never
            augments.
    """

    def __init__(
        self,
        pretrained: str,
        encoder_type: str | None = None,
        out_dims: Sequence[int] | str | None = "auto",
        upsample_mode: UpsampleMode = "bilinear",
        refine_highres: bool = True,
        freeze_vit: bool = False,
        force_dtype: str | torch.dtype | None = None,
        verbose: bool = False,
        feature_layers: int | Sequence[int] | None = None,
        random_init: bool = False,
        pos_interp: str = "meta",
        revision: str | None = None,
        trust_remote_code: bool = False,
        resize_antialias: bool = True,
        hr_transforms: int = 4,
        hr_shift: int | None = None,
        hr_directions: int | None = None,
        hr_border: str = "reflect",
        train_augmentation: bool = False,
    ) -> None:
        super().__init__()
        self.force_dtype = parse_dtype(force_dtype)
        loaded = load_encoder(
            pretrained,
            encoder_type,
            random_init=random_init,
            revision=revision,
            trust_remote_code=trust_remote_code,
            pos_interp=pos_interp,  # type: ignore[arg-type]
        )
        self.vit = loaded.model
        self.family = loaded.family
        self.encoder_type = loaded.family.name
        config = self.vit.config
        patch = config.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        self.embed_dim = int(config.hidden_size)
        self.num_prefix_tokens = self.family.num_prefix_tokens(config)
        self.num_layers = len(self.family.blocks(self.vit))
        self.feature_layers = resolve_feature_layers(feature_layers, self.num_layers)
        self.channel_list = resolve_out_dims(out_dims, self.embed_dim)
        self.out_dims = list(self.channel_list)
        self.pyramid = MultiScalePyramid(self.embed_dim, self.channel_list, upsample_mode, refine_highres)
        self.upsample_mode = upsample_mode
        self.hr_transforms: TransformSet | None = None
        if upsample_mode == "transform_avg":
            self.hr_transforms = make_transforms(int(hr_transforms), self.patch_size, shift=hr_shift,
                                                 directions=hr_directions, border=hr_border)
        self.freeze_vit = bool(freeze_vit)
        self.verbose = bool(verbose)
        self.resize_antialias = bool(resize_antialias)
        self.train_augmentation = bool(train_augmentation)
        self._augmenters = [self.vit.get_submodule(path) for path in self.family.train_augmentation_modules
                            if _has_submodule(self.vit, path)]
        if not self.train_augmentation:
            for module in self._augmenters:
                module.eval()
        self._forward_kwargs = dict(self.family.forward_kwargs)
        self._reported_sizes: set[tuple[int, int]] = set()
        self._block_pattern = re.compile(rf"(?:^|\.)vit\.{re.escape(self.family.resolve_blocks_path(self.vit))}\.(\d+)\.")
        for name, param in self.vit.named_parameters():
            if name.startswith(self.family.unused_params):
                param.requires_grad_(False)
        if self.force_dtype is not None:
            self.vit.to(self.force_dtype)
        if self.freeze_vit:
            self.vit.requires_grad_(False)
            self.vit.eval()

    # ---- SAM2 / timm-style metadata -------------------------------------------------------
    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """Channels and stride of each returned map, high-res first (the forward order)."""
        return [
            {"num_chs": c, "reduction": s, "module": f"pyramid.to_s{s}", "vit_layer": layer}
            for c, s, layer in zip(reversed(self.channel_list), STRIDES, self.feature_layers)
        ]

    def vit_input_size(self, height: int, width: int) -> tuple[int, int]:
        """Pixel size the ViT is run at for a ``height x width`` input."""
        check_input_size(height, width)
        return height // GRID_STRIDE * self.patch_size, width // GRID_STRIDE * self.patch_size

    def get_num_layers(self) -> int:
        """Number of ViT blocks (upstream ``layer_decay_param_modifier`` adds 1)."""
        return self.num_layers

    def get_layer_id(self, name: str) -> int:
        """Layer-decay id of a parameter name: embeddings 0, block i -> i+1, the rest last."""
        match = self._block_pattern.search(name)
        if match:
            return int(match.group(1)) + 1
        if re.search(r"(?:^|\.)vit\.embeddings\.", name):
            return 0
        return self.num_layers + 1

    def train(self, mode: bool = True) -> "ViTTrunkMultiScale":
        super().train(mode)
        if self.freeze_vit:
            self.vit.eval()
        if not self.train_augmentation:
            for module in self._augmenters:
                module.eval()
        return self

    # ---- forward ---------------------------------------------------------------------------
    def _tokens_to_map(self, tokens: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        return tokens_to_grid(tokens, self.num_prefix_tokens, gh, gw, f"{self.encoder_type} ViT")

    def forward_vit_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the ViT on an image ``(B, 3, H, W)`` (H, W multiples of 16) and return the four
        stride-16 maps ``(B, C, H/16, W/16)`` that feed the levels s4, s8, s16, s32."""
        height, width = x.shape[-2:]
        return self._vit_maps(self._vit_input(x), height // GRID_STRIDE, width // GRID_STRIDE)

    def _vit_input(self, x: torch.Tensor) -> torch.Tensor:
        """Resize to :meth:`vit_input_size` and cast to ``force_dtype``."""
        size = self.vit_input_size(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                              antialias=self.resize_antialias and shrink)
        if self.force_dtype is not None:
            x = x.to(self.force_dtype)
        return x

    def _vit_maps(self, x: torch.Tensor, gh: int, gw: int) -> list[torch.Tensor]:
        last = self.num_layers - 1
        need_hidden = any(layer != last for layer in self.feature_layers)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_vit):
            out = self.vit(pixel_values=x, output_hidden_states=need_hidden, **self._forward_kwargs)
            maps: dict[int, torch.Tensor] = {}
            for layer in self.feature_layers:
                if layer not in maps:
                    if layer == last:
                        tokens = out.last_hidden_state
                    else:
                        tokens = self.family.final_norm(self.vit)(out.hidden_states[layer + 1])
                    maps[layer] = self._tokens_to_map(tokens, gh, gw)
        return [maps[layer] for layer in self.feature_layers]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` -> ``[(B, C4, H/4, W/4), (B, C8, H/8, W/8), (B, C16, H/16, W/16),
        (B, C32, ceil(H/32), ceil(W/32))]``; H and W must be multiples of 16."""
        check_input_size(*x.shape[-2:])
        pyramid_dtype = self.pyramid.to_s16.weight.dtype
        if self.hr_transforms is not None:
            outs = self._forward_transform_avg(x, pyramid_dtype)
        else:
            maps = [m.to(pyramid_dtype) for m in self.forward_vit_maps(x)]
            outs = self.pyramid(maps)
        if self.force_dtype is not None:
            outs = [o.to(self.force_dtype) for o in outs]
        if self.verbose and not torch.compiler.is_compiling():
            self._report(x, outs)
        return outs

    def _forward_transform_avg(self, x: torch.Tensor, pyramid_dtype: torch.dtype) -> list[torch.Tensor]:
        """The K transformed copies of each image in one ViT batch, then the averaging pyramid."""
        tset = self.hr_transforms
        assert tset is not None
        gh, gw = x.shape[-2] // GRID_STRIDE, x.shape[-1] // GRID_STRIDE
        x_vit = self._vit_input(x)
        vit_size = tuple(x_vit.shape[-2:])
        maps = [m.to(pyramid_dtype) for m in self._vit_maps(apply_transforms(x_vit, tset), gh, gw)]

        def averager(level_maps: torch.Tensor, scale: int) -> torch.Tensor:
            return average_maps(level_maps, tset, vit_size, (gh * scale, gw * scale), patch=self.patch_size)

        return self.pyramid(maps, averager)

    def _report(self, x: torch.Tensor, outs: list[torch.Tensor]) -> None:
        key = tuple(x.shape[-2:])
        if key in self._reported_sizes:
            return
        self._reported_sizes.add(key)
        vit_h, vit_w = self.vit_input_size(*key)
        levels = ", ".join(f"s{s}: {tuple(o.shape[1:])} {str(o.dtype).replace('torch.', '')}" for s, o in zip(STRIDES, outs))
        print(
            f"[ViTTrunkMultiScale] {self.encoder_type} patch {self.patch_size}: input {key[0]}x{key[1]} -> ViT "
            f"{vit_h}x{vit_w} ({vit_h // self.patch_size}x{vit_w // self.patch_size} tokens, layers "
            f"{list(self.feature_layers)}) -> {levels}; channel_list {self.channel_list}"
            + (f"; transform_avg {self.hr_transforms.describe()}" if self.hr_transforms is not None else ""),
            file=sys.stderr,
        )


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def check_input_size(height: int, width: int) -> None:
    if height % GRID_STRIDE or width % GRID_STRIDE or height <= 0 or width <= 0:
        raise ValueError(
            f"input size {height}x{width} is not a multiple of {GRID_STRIDE}: SAM2 needs the stride-16 map to be "
            f"exactly H/16 x W/16. Use an image_size that is a multiple of 16 (e.g. {max(16, height // 16 * 16)})."
        )
