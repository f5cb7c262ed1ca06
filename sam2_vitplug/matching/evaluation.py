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


def detection_agreement(reference: list[dict], other: list[dict], *, mask_iou: float = 0.9) -> dict[str, float]:
    """How far ``other`` (e.g. a bf16 run) reproduces ``reference`` (the fp32 run of the same job).

    Per image, each reference detection is matched to at most one unmatched ``other`` detection of
    the same class, greedily in descending reference score, taking the candidate of highest mask IoU
    (RLE segmentations; boxes when a result has none) if it is at least ``mask_iou``. Returns
    ``matched_fraction`` (of the reference detections), ``mean_abs_score_diff`` and
    ``max_abs_score_diff`` over matched pairs (NaN when none), ``mean_mask_iou`` of the pairs and both
    counts. Why greedy by score: the top-scored detections are the ones AP is most sensitive to."""
    import math

    import numpy as np
    from pycocotools import mask as mask_utils

    def by_image(dets: list[dict]) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for d in dets:
            out.setdefault(int(d["image_id"]), []).append(d)
        return out

    def shape(d: dict):
        seg = d.get("segmentation")
        if seg is None:
            return None
        return {"size": seg["size"], "counts": seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]}

    ref_img, oth_img = by_image(reference), by_image(other)
    matched, diffs, ious = 0, [], []
    for image_id, refs in ref_img.items():
        refs = sorted(refs, key=lambda d: -float(d["score"]))
        cands = oth_img.get(image_id, [])
        used = np.zeros(len(cands), dtype=bool)
        for r in refs:
            idx = [j for j, c in enumerate(cands) if not used[j] and int(c["category_id"]) == int(r["category_id"])]
            if not idx:
                continue
            rs, cs = shape(r), [shape(cands[j]) for j in idx]
            if rs is not None and all(c is not None for c in cs):
                iou = mask_utils.iou(cs, [rs], [0])[:, 0]
            else:
                iou = mask_utils.iou([cands[j]["bbox"] for j in idx], [r["bbox"]], [0])[:, 0]
            best = int(np.argmax(iou))
            if float(iou[best]) >= mask_iou:
                used[idx[best]] = True
                matched += 1
                diffs.append(abs(float(cands[idx[best]]["score"]) - float(r["score"])))
                ious.append(float(iou[best]))
    nan = math.nan
    return {"reference_detections": float(len(reference)), "other_detections": float(len(other)),
            "matched": float(matched), "matched_fraction": matched / len(reference) if reference else nan,
            "mean_abs_score_diff": float(np.mean(diffs)) if diffs else nan,
            "max_abs_score_diff": float(np.max(diffs)) if diffs else nan,
            "mean_mask_iou": float(np.mean(ious)) if ious else nan}
