"""nn.Modules: the multi-scale ViT trunk, its pyramid, and thin SAM2 encoder/neck subclasses."""

from .image_encoder import ViTFpnNeck, ViTImageEncoder
from .pyramid import MultiScalePyramid
from .trunk import ViTTrunkMultiScale, resolve_feature_layers, resolve_out_dims

__all__ = [
    "MultiScalePyramid",
    "ViTFpnNeck",
    "ViTImageEncoder",
    "ViTTrunkMultiScale",
    "resolve_feature_layers",
    "resolve_out_dims",
]
