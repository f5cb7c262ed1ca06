"""Loading ViT backbones and the encoder registry (entry-point group ``sam2_vitplug.encoders``)."""

from .families import EncoderFamily
from .loading import EncoderNotAvailableError, LoadedEncoder, load_encoder
from .presets import EncoderPreset
from .registry import ENTRY_POINT_GROUP, find_preset, get_family, get_preset, list_encoder_types, list_presets, refresh

__all__ = [
    "ENTRY_POINT_GROUP",
    "EncoderFamily",
    "EncoderNotAvailableError",
    "EncoderPreset",
    "LoadedEncoder",
    "find_preset",
    "get_family",
    "get_preset",
    "list_encoder_types",
    "list_presets",
    "load_encoder",
    "refresh",
]
