"""Models and cells of the trunk benchmark: one ViT shared by the trunk variants, Hiera from upstream."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

VIT_PRESETS = {"S": "dinov2_small", "B": "dinov2_base", "L": "dinov2_large"}
HIERA_CONFIGS = {
    "t": "sam2.1_hiera_t.yaml",
    "s": "sam2.1_hiera_s.yaml",
    "b+": "sam2.1_hiera_b+.yaml",
    "l": "sam2.1_hiera_l.yaml",
}
TRUNK_VARIANTS = (("bilinear", True), ("bilinear", False), ("deconv", True), ("deconv", False))
DEFAULT_VARIANT = ("bilinear", True)  # the trunk's default configuration, also used by the encoder
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def variant_name(upsample_mode: str, refine: bool, prefix: str = "trunk") -> str:
    return f"{prefix}:{upsample_mode}{'+refine' if refine else ''}"


def count_params(*modules: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def build_neck(channel_list: list[int]) -> torch.nn.Module:
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    from sam2_vitplug.modeling import ViTFpnNeck

    return ViTFpnNeck(
        position_encoding=PositionEmbeddingSine(num_pos_feats=256, normalize=True, temperature=10000),
        d_model=256,
        backbone_channel_list=list(channel_list),
        fpn_top_down_levels=[2, 3],
        fpn_interp_model="nearest",
    )


def build_hiera_encoder(key: str) -> torch.nn.Module:
    """Upstream ``model.image_encoder`` (Hiera trunk + FpnNeck) from the installed sam2 config."""
    import hydra
    import sam2
    from omegaconf import OmegaConf

    path = Path(sam2.__file__).resolve().parent / "configs" / "sam2.1" / HIERA_CONFIGS[key]
    cfg = OmegaConf.load(path)
    return hydra.utils.instantiate(cfg.model.image_encoder)


def resize_like_trunk(trunk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input resize ``ViTTrunkMultiScale.forward_vit_maps`` applies before the ViT."""
    height, width = x.shape[-2:]
    size = trunk.vit_input_size(height, width)
    if size == (height, width):
        return x
    shrink = size[0] < height or size[1] < width
    return F.interpolate(
        x, size=size, mode="bilinear", align_corners=False, antialias=trunk.resize_antialias and shrink
    )


def tokens_to_map(trunk: torch.nn.Module, tokens: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """Same view the trunk makes of the ViT tokens (non-contiguous, like the real forward)."""
    batch, count, dim = tokens.shape
    return tokens[:, count - gh * gw :].transpose(1, 2).reshape(batch, dim, gh, gw)


@dataclass
class Cell:
    model: str
    vit: str | None
    image_size: int
    variant: str
    params: int
    fn: Callable[[], Any]
    setup: Callable[[], None] = lambda: None
    warm: Callable[[], Any] | None = None
    vit_input_size: list[int] | None = None
    upsample_mode: str | None = None
    refine_highres: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    cpu_util: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    mems: list[dict[str, Any]] = field(default_factory=list)
    mem: dict[str, Any] | None = None

    @property
    def group(self) -> tuple[str | None, int]:
        return (self.vit, self.image_size)


class ViTBench:
    """One ViT size: one ViT module shared by the four trunk variants and the encoder."""

    def __init__(self, size_key: str, device: torch.device) -> None:
        from sam2_vitplug.modeling import MultiScalePyramid, ViTImageEncoder, ViTTrunkMultiScale

        self.size_key = size_key
        self.preset = VIT_PRESETS[size_key]
        up, refine = DEFAULT_VARIANT
        self.trunk = ViTTrunkMultiScale(self.preset, random_init=True, upsample_mode=up, refine_highres=refine)
        self.pyramids = {DEFAULT_VARIANT: self.trunk.pyramid}
        for mode, ref in TRUNK_VARIANTS:
            if (mode, ref) not in self.pyramids:
                self.pyramids[(mode, ref)] = MultiScalePyramid(
                    self.trunk.embed_dim, self.trunk.channel_list, mode, ref
                )
        self.neck = build_neck(self.trunk.channel_list)
        self.encoder = ViTImageEncoder(trunk=self.trunk, neck=self.neck, scalp=1)
        self.encoder.eval().to(device)
        for pyr in self.pyramids.values():
            pyr.eval().to(device)
        self.forward_kwargs = dict(self.trunk.family.forward_kwargs)
        self.vit_params = count_params(self.trunk.vit)
        self._maps: dict[int, list[torch.Tensor]] = {}

    def use(self, variant: tuple[str, bool]) -> None:
        self.trunk.pyramid = self.pyramids[variant]
        self.trunk.upsample_mode = variant[0]

    def raw(self, x_resized: torch.Tensor) -> Any:
        return self.trunk.vit(pixel_values=x_resized, **self.forward_kwargs)

    def maps_from(self, image_size: int, out: Any) -> list[torch.Tensor]:
        g = image_size // 16
        last = self.trunk.num_layers - 1
        if any(layer != last for layer in self.trunk.feature_layers):
            raise NotImplementedError("shared warm-up assumes the default feature_layers (last layer)")
        m = tokens_to_map(self.trunk, out.last_hidden_state, g, g)
        self._maps[image_size] = [m] * 4
        return self._maps[image_size]

    def cells(self, image_size: int, x: torch.Tensor, x_resized: torch.Tensor) -> list[Cell]:
        trunk = self.trunk
        vit_size = list(x_resized.shape[-2:])
        common = dict(model=self.preset, vit=self.size_key, image_size=image_size, vit_input_size=vit_size)

        def warm_raw() -> None:
            self.maps_from(image_size, self.raw(x_resized))

        cells = [
            Cell(variant="raw_vit", params=self.vit_params, fn=lambda: self.raw(x_resized), warm=warm_raw,
                 **common)
        ]
        for mode, refine in TRUNK_VARIANTS:
            pyr = self.pyramids[(mode, refine)]

            def warm_trunk(pyr: torch.nn.Module = pyr) -> None:
                resize_like_trunk(trunk, x)
                pyr(self._maps[image_size])

            cells.append(
                Cell(
                    variant=variant_name(mode, refine),
                    params=self.vit_params + count_params(pyr),
                    fn=lambda: trunk(x),
                    setup=lambda v=(mode, refine): self.use(v),
                    warm=warm_trunk,
                    upsample_mode=mode,
                    refine_highres=refine,
                    **common,
                )
            )

        def warm_encoder() -> None:
            resize_like_trunk(trunk, x)
            self.neck(self.pyramids[DEFAULT_VARIANT](self._maps[image_size]))

        cells.append(
            Cell(
                variant=variant_name(*DEFAULT_VARIANT, prefix="encoder"),
                params=count_params(self.encoder),
                fn=lambda: self.encoder(x),
                setup=lambda: self.use(DEFAULT_VARIANT),
                warm=warm_encoder,
                upsample_mode=DEFAULT_VARIANT[0],
                refine_highres=DEFAULT_VARIANT[1],
                **common,
            )
        )
        return cells
