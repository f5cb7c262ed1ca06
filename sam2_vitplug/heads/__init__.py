"""Semantic segmentation heads on frozen ViT backbones: linear, UPerNet, Mask2Former-style;
training, evaluation and image/video inference (``sam2-vitplug seg``)."""

from .linear import LinearHead
from .mask2former import Mask2FormerHead
from .matcher import hungarian_match, solve_assignment
from .metrics import IGNORE_INDEX, confusion_matrix, metrics_from_confusion
from .model import SegModel, SegModelConfig, build_seg_model, head_names, load_seg_model
from .upernet import UPerHead

__all__ = [
    "IGNORE_INDEX",
    "LinearHead",
    "Mask2FormerHead",
    "SegModel",
    "SegModelConfig",
    "UPerHead",
    "build_seg_model",
    "confusion_matrix",
    "head_names",
    "hungarian_match",
    "load_seg_model",
    "metrics_from_confusion",
    "solve_assignment",
]
