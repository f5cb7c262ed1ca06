"""Point-prompt mask IoU on a COCO-format split: the learning signal ``tools/train_check.py`` reports.

One positive click per instance, at the mask pixel farthest from its boundary (deterministic);
the predictor's best of 3 masks by predicted IoU is compared with the ground truth.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointIoU:
    """Mean IoU over instances (mask picked by the model's predicted IoU, and the best of its 3
    masks by true IoU: the latter does not depend on the IoU head) and the counts."""

    mean_iou: float
    oracle_iou: float
    instances: int
    images: int


def click_point(mask: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the pixel of ``mask (H, W)`` farthest from the background (ties: first in raster order)."""
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(np.pad(mask.astype(bool), 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def load_split(split_dir: str | Path, limit: int | None = None) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """``[(image (H, W, 3) uint8, [mask (H, W) bool, ...]), ...]`` from ``split_dir/annotations.json``."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    split_dir = Path(split_dir)
    path = split_dir / "annotations.json"
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' is missing (write the data with tools/make_synthetic_dataset.py)")
    coco = json.loads(path.read_text())
    anns: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    out = []
    for image in coco["images"][:limit]:
        rgb = np.array(Image.open(split_dir / "images" / image["file_name"]).convert("RGB"))  # writable: torchvision warns otherwise
        masks = [mask_utils.decode(a["segmentation"]).astype(bool) for a in anns.get(image["id"], [])]
        out.append((rgb, masks))
    return out


@torch.inference_mode()
def point_prompt_iou(model: torch.nn.Module, samples: list[tuple[np.ndarray, list[np.ndarray]]]) -> PointIoU:
    """Mean IoU of single-click predictions of ``model`` (a SAM2Base) over every instance."""
    from sam2_vitplug.build import make_image_predictor

    model.eval()
    predictor = make_image_predictor(model)
    ious, oracle = [], []
    for rgb, masks in samples:
        predictor.set_image(rgb)
        for gt in masks:
            x, y = click_point(gt)
            pred, scores, _ = predictor.predict(point_coords=np.array([[x, y]]), point_labels=np.array([1]),
                                                multimask_output=True)
            per_mask = [_iou(m > 0, gt) for m in pred]
            ious.append(per_mask[int(np.argmax(scores))])
            oracle.append(max(per_mask))
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return PointIoU(mean(ious), mean(oracle), len(ious), len(samples))


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0
