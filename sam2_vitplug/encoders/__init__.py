"""Loading ViT backbones and the encoder registry (entry-point group ``sam2_vitplug.encoders``).

Imported lazily (as the top-level package is) so that the CLI can read the help text in
``encoders.sources`` without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "EncoderFamily": "sam2_vitplug.encoders.families",
    "EncoderNotAvailableError": "sam2_vitplug.encoders.loading",
    "LoadedEncoder": "sam2_vitplug.encoders.loading",
    "load_encoder": "sam2_vitplug.encoders.loading",
    "EncoderPreset": "sam2_vitplug.encoders.presets",
    "ENTRY_POINT_GROUP": "sam2_vitplug.encoders.registry",
    "find_preset": "sam2_vitplug.encoders.registry",
    "get_family": "sam2_vitplug.encoders.registry",
    "get_preset": "sam2_vitplug.encoders.registry",
    "list_encoder_types": "sam2_vitplug.encoders.registry",
    "list_presets": "sam2_vitplug.encoders.registry",
    "refresh": "sam2_vitplug.encoders.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sam2_vitplug.encoders' has no attribute '{name}'")
