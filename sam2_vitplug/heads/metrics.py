"""Semantic segmentation metrics from a confusion matrix; label 255 is ignored everywhere."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

IGNORE_INDEX = 255


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(num_classes, num_classes)`` int64 counts, rows = ground truth, columns = prediction.

    Pixels whose target is ``ignore_index`` are dropped. Any other target outside
    ``[0, num_classes)`` is an error (it would silently skew the metrics).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target holds class id {int(target.max())} outside [0, {num_classes}) that is not "
                         f"the ignore index {ignore_index}")
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def metrics_from_confusion(conf: torch.Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """mIoU, per-class IoU, pixel accuracy and mean class accuracy.

    A class absent from both ground truth and predictions has IoU ``None`` (JSON null) and
    is left out of the mean, the usual convention (mmseg, torchmetrics' ``ignore`` of empty
    classes).
    """
    conf = conf.double()
    tp = conf.diag()
    gt = conf.sum(1)
    pred = conf.sum(0)
    union = gt + pred - tp
    iou = [float(t / u) if u > 0 else None for t, u in zip(tp, union)]
    acc = [float(t / g) if g > 0 else None for t, g in zip(tp, gt)]
    valid = [v for v in iou if v is not None]
    valid_acc = [v for v in acc if v is not None]
    total = float(conf.sum())
    names = list(class_names) if class_names is not None else [str(i) for i in range(conf.shape[0])]
    return {
        "mIoU": sum(valid) / len(valid) if valid else math.nan,
        "pixel_accuracy": float(tp.sum() / total) if total else math.nan,
        "mean_accuracy": sum(valid_acc) / len(valid_acc) if valid_acc else math.nan,
        "per_class_iou": dict(zip(names, iou)),
        "pixels": int(total),
    }


def write_json_atomic(data: Any, path: str | os.PathLike) -> None:
    """Write JSON through a temporary file + ``os.replace``, so readers never see half a file."""
    from ..atomic import atomic_target

    with atomic_target(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=True))
