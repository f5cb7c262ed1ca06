"""sam2-vitplug: self-supervised ViT trunks (DINOv2, DINOv3, I-JEPA) for SAM 2.

The public API is imported lazily so that ``import sam2_vitplug`` (which Hydra does to find
our configs) stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .version import __version__

_EXPORTS = {
    "ViTTrunkMultiScale": "sam2_vitplug.modeling",
    "ViTFpnNeck": "sam2_vitplug.modeling",
    "ViTImageEncoder": "sam2_vitplug.modeling",
    "build_sam2_vit": "sam2_vitplug.build",
    "build_sam2_vit_video_predictor": "sam2_vitplug.build",
    "load_sam2_weights": "sam2_vitplug.build",
    "make_image_predictor": "sam2_vitplug.build",
    "make_mask_generator": "sam2_vitplug.build",
    "fit_predictor_to_model": "sam2_vitplug.build",
    "load_encoder": "sam2_vitplug.encoders",
    "list_presets": "sam2_vitplug.encoders",
    "list_encoder_types": "sam2_vitplug.encoders",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sam2_vitplug' has no attribute '{name}'")
