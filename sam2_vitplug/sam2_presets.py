"""Named SAM2 models shipped with the package: a config plus weights, buildable by name.

Why: ``build_sam2_vit("sam2_vit_demo")`` should work on a machine with no downloads. A preset
pairs one of our model configs with a safetensors file inside the package (see
``sam2_vitplug/assets/``); the weights were trained with the same trunk, so they load fully
and strictly (nothing excluded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SAM2Preset:
    """A buildable SAM2 model: ``config`` (found by our Hydra plugin) and packaged ``weights``."""

    name: str
    config: str
    weights: str  # relative to the sam2_vitplug package
    card: str  # relative to the sam2_vitplug package
    summary: str

    def weights_path(self) -> Path:
        from .encoders.loading import packaged_path

        return packaged_path(self.weights)


SAM2_PRESETS = {
    preset.name: preset
    for preset in (
        SAM2Preset(
            name="sam2_vit_demo",
            config="sam2_vit_demo.yaml",
            weights="assets/sam2_vit_demo/model.safetensors",
            card="assets/sam2_vit_demo/MODEL_CARD.md",
            summary="demo model trained here on synthetic shapes (256 px, DINOv2-arch ViT, 128 wide, 6 deep); "
                    "not for natural images",
        ),
    )
}


def find_sam2_preset(name: str) -> SAM2Preset | None:
    """The preset called ``name`` (with or without ``.yaml``), or None for any other config name."""
    return SAM2_PRESETS.get(str(name).removesuffix(".yaml"))
