"""nn.Modules: the multi-scale ViT trunk, its pyramid, thin SAM2 encoder/neck subclasses, and the
high-resolution feature averager (HR-Dv2 style: transforms, stride reduction)."""

from .hr_features import HRFeatureExtractor
from .image_encoder import ViTFpnNeck, ViTImageEncoder
from .pyramid import MultiScalePyramid
from .stride import reduced_stride
from .transforms import make_transforms
from .trunk import ViTTrunkMultiScale, resolve_feature_layers, resolve_out_dims

__all__ = [
    "HRFeatureExtractor",
    "MultiScalePyramid",
    "ViTFpnNeck",
    "ViTImageEncoder",
    "ViTTrunkMultiScale",
    "make_transforms",
    "reduced_stride",
    "resolve_feature_layers",
    "resolve_out_dims",
]
