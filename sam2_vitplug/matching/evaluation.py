"""COCO evaluation (pycocotools ``COCOeval``) of few-shot results on the bank's classes."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Sequence

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def evaluate(coco_gt: dict, results: list[dict], category_ids: Sequence[int] | None = None,
             iou_types: Sequence[str] = ("bbox", "segm"),
             per_class: dict[str, dict[int, float]] | None = None) -> dict[str, dict[str, float]]:
    """The 12 COCO summary numbers per IoU type, restricted to ``category_ids`` (all if None).

    With no detections every number is 0 (pycocotools cannot load an empty result list).
    Pass a dict as ``per_class`` to also receive ``{iou_type: {category_id: AP}}`` in it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {k: v for k, v in coco_gt.items()}
    gt.dataset.setdefault("info", {})
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    cats = sorted(gt.getCatIds()) if category_ids is None else sorted(int(c) for c in category_ids)
    unknown = [c for c in cats if c not in gt.cats]
    if unknown:
        raise ValueError(f"category ids {unknown} are not in the ground truth ({sorted(gt.cats)})")
    results = [r for r in results if int(r["category_id"]) in cats]
    out: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou type must be 'bbox' or 'segm', got {iou_type!r}")
        if not results:
            out[iou_type] = {name: 0.0 for name in STAT_NAMES}
            if per_class is not None:
                per_class[iou_type] = {c: 0.0 for c in cats}
            continue
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            dt = gt.loadRes([dict(r) for r in results])
            ev = COCOeval(gt, dt, iou_type)
            ev.params.catIds = cats
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        logger.info("COCOeval %s:\n%s", iou_type, buffer.getvalue())
        out[iou_type] = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
        if per_class is not None:
            per_class[iou_type] = _per_class_ap(ev, cats)
    return out


def _per_class_ap(ev, cats: Sequence[int]) -> dict[int, float]:
    """AP (IoU 0.50:0.95, all areas, 100 detections) per category, as COCOeval.summarize averages it;
    -1 for a category with no ground truth."""
    precision = ev.eval["precision"]  # (iou thresholds, recall points, categories, areas, max dets)
    out = {}
    for k, cat in enumerate(cats):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        out[int(cat)] = float(values.mean()) if values.size else -1.0
    return out


def format_summary(stats: dict[str, dict[str, float]]) -> str:
    """A table: one row per statistic, one column per IoU type."""
    types = list(stats)
    lines = ["metric  " + "  ".join(f"{t:>6}" for t in types)]
    for name in STAT_NAMES:
        lines.append(f"{name:<7} " + "  ".join(f"{stats[t][name]:6.3f}" for t in types))
    return "\n".join(lines)
