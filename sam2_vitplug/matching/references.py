"""References: a seeded N-shot sampler over a COCO instances file, and reference masks.

Any COCO json works (custom datasets need nothing else). Unusable instances are skipped and
counted by reason (crowd, tiny, border-touching, empty mask); several instances of one image
may each serve as a reference. Annotations with a box but no segmentation are kept: their
mask comes from SAM2 box prompts (``BoxPrompter``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# (H, W, 3) uint8 image, (K, 4) xyxy boxes -> (K, H, W) bool masks
BoxPrompter = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Reference:
    """One reference instance."""

    ann_id: int
    image_id: int
    file_name: str
    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h
    segmentation: Any  # COCO polygon list / RLE dict, or None when box-only


@dataclass
class SampleReport:
    """What the sampler used and skipped, by reason and class."""

    used: dict[int, int] = field(default_factory=dict)
    available: dict[int, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    box_only: int = 0

    def summary(self) -> str:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        short = [c for c, n in self.used.items() if n < max(self.used.values(), default=0)]
        return (f"{sum(self.used.values())} references over {len(self.used)} classes "
                f"({self.box_only} box-only); skipped {skipped}" + (f"; fewer shots for classes {short}" if short else ""))


def has_mask(ann: dict) -> bool:
    seg = ann.get("segmentation")
    return bool(seg) and (isinstance(seg, dict) or (isinstance(seg, list) and any(len(p) >= 6 for p in seg)))


def _skip_reason(ann: dict, image: dict, min_size: float, border: float) -> str | None:
    if ann.get("iscrowd", 0):
        return "crowd"
    bbox = ann.get("bbox")
    if not bbox or len(bbox) != 4:
        return "no box"
    x, y, w, h = map(float, bbox)
    if min(w, h) < min_size:
        return "tiny"
    width, height = float(image["width"]), float(image["height"])
    if x <= border or y <= border or x + w >= width - border or y + h >= height - border:
        return "border"
    return None


SAMPLERS = ("ntt", "vitplug")


def _ntt_invalid(ann: dict, image: dict, min_size: float, border: float) -> str | None:
    """The reference implementation's validity rule: not crowd, box sides >= ``min_size`` and at
    least ``border`` px from every image edge (non-strict, as there)."""
    if ann.get("iscrowd", 0) == 1:
        return "crowd"
    x, y, w, h = map(float, ann["bbox"])
    if w < min_size or h < min_size:
        return "tiny"
    if x < border or y < border or float(image["width"]) - (x + w) < border or float(image["height"]) - (y + h) < border:
        return "border"
    return None


def sample_references_ntt(coco: dict, shots: int, seed: int, *, category_ids: Sequence[int] | None = None,
                          min_size: float = 32.0, border: float = 10.0) -> tuple[list[Reference], SampleReport]:
    """``sampler: ntt``, the reference implementation's draw, so a seed picks the same annotation ids.

    ``random.Random(seed)`` (the sequence of ``random.seed(seed)``) shuffles each class's
    ``(image, annotation)`` list, classes in order of first appearance in the annotations and the
    random state running on across classes; invalid annotations (:func:`_ntt_invalid`,
    ``isimpossible``) and a second instance from an already picked image are skipped; the first
    ``shots`` remain, in draw order.
    """
    import random

    cats = {int(c["id"]): c.get("name", str(c["id"])) for c in coco["categories"]}
    wanted = set(cats) if category_ids is None else {int(c) for c in category_ids}
    unknown = sorted(c for c in wanted if c not in cats)
    if unknown:
        raise ValueError(f"category ids {unknown} are not in the COCO categories {sorted(cats)}")
    images = {int(im["id"]): im for im in coco["images"]}
    per_class: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        cat = int(ann["category_id"])
        if cat in wanted and ann.get("isimpossible", 0) != 1:
            per_class.setdefault(cat, []).append(ann)
    rng = random.Random(seed)
    report = SampleReport()
    refs: list[Reference] = []
    for cat, pool in per_class.items():
        pool = list(pool)
        rng.shuffle(pool)
        seen: set[int] = set()
        report.available[cat] = len(pool)
        for ann in pool:
            image = images.get(int(ann["image_id"]))
            reason = "image missing from json" if image is None else _ntt_invalid(ann, image, min_size, border)
            if reason is not None:
                report.skipped[reason] += 1
                continue
            if int(ann["image_id"]) in seen:
                report.skipped["same image"] += 1
                continue
            seen.add(int(ann["image_id"]))
            box_only = not has_mask(ann)
            report.box_only += box_only
            refs.append(Reference(int(ann["id"]), int(ann["image_id"]), image["file_name"], cat,
                                  tuple(float(v) for v in ann["bbox"]), None if box_only else ann["segmentation"]))
            if len(seen) >= shots:
                break
        report.used[cat] = len(seen)
    _count_unlisted(coco, report)
    empty_ids = [c for c in sorted(wanted) if not report.used.get(c)]
    _refuse_unannotated(coco, cats, empty_ids, {c: len(p) for c, p in per_class.items()})
    empty = [f"{cats[c]!r} (id {c})" for c in empty_ids]
    if empty:
        raise ValueError(
            f"no usable reference instance for class(es) {', '.join(empty)} under the NTT rule (not crowd, box "
            f">= {min_size:g} px, >= {border:g} px from the border). Skipped: {dict(report.skipped)}. Add references "
            "for them, restrict the classes (--classes) or use --method vitplug (looser rule)."
        )
    logger.info("reference sampler (ntt): %s", report.summary())
    return refs, report


def sample_references(
    coco: dict,
    shots: int,
    seed: int,
    *,
    category_ids: Sequence[int] | None = None,
    min_size: float = 32.0,
    border: float | None = None,
    sampler: str = "ntt",
) -> tuple[list[Reference], SampleReport]:
    """Pick up to ``shots`` usable instances per class.

    ``sampler="ntt"``: :func:`sample_references_ntt`. ``"vitplug"``: ``numpy.random.default_rng(seed)``
    over candidates ordered by annotation id (the draw depends on the file's content and the seed
    only; several instances of one image may be picked). ``border`` defaults to the sampler's
    (10 px for ntt, 1 px for vitplug). Raises ``ValueError`` naming every class with no usable
    instance.
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if sampler not in SAMPLERS:
        raise ValueError(f"memory.sampler={sampler!r} is not one of {', '.join(SAMPLERS)}")
    if border is None:
        border = 10.0 if sampler == "ntt" else 1.0
    if sampler == "ntt":
        return sample_references_ntt(coco, shots, seed, category_ids=category_ids, min_size=min_size, border=border)
    cats = {int(c["id"]): c.get("name", str(c["id"])) for c in coco["categories"]}
    wanted = sorted(cats) if category_ids is None else [int(c) for c in category_ids]
    unknown = [c for c in wanted if c not in cats]
    if unknown:
        raise ValueError(f"category ids {unknown} are not in the COCO categories {sorted(cats)}")
    images = {int(im["id"]): im for im in coco["images"]}
    report = SampleReport()
    candidates: dict[int, list[dict]] = {c: [] for c in wanted}
    for ann in sorted(coco["annotations"], key=lambda a: int(a["id"])):
        cat = int(ann["category_id"])
        if cat not in candidates:
            continue
        image = images.get(int(ann["image_id"]))
        if image is None:
            report.skipped["image missing from json"] += 1
            continue
        reason = _skip_reason(ann, image, min_size, border)
        if reason is None and ann.get("area", 1) == 0 and has_mask(ann):
            reason = "empty mask"
        if reason is not None:
            report.skipped[reason] += 1
            continue
        candidates[cat].append(ann)
    _count_unlisted(coco, report)
    _refuse_unannotated(coco, cats, [c for c in wanted if not candidates[c]],
                        Counter(int(a["category_id"]) for a in coco["annotations"]))
    empty = [f"{cats[c]!r} (id {c})" for c in wanted if not candidates[c]]
    if empty:
        raise ValueError(
            f"no usable reference instance for class(es) {', '.join(empty)}: every instance is crowd, tiny "
            f"(< {min_size:g} px), touches the border or is missing. Skipped so far: {dict(report.skipped)}. "
            "Add references for them or restrict the classes."
        )
    rng = np.random.default_rng(seed)
    refs: list[Reference] = []
    for cat in wanted:
        pool = candidates[cat]
        order = rng.permutation(len(pool))[:shots]
        report.available[cat] = len(pool)
        report.used[cat] = len(order)
        for i in sorted(order.tolist()):
            ann = pool[i]
            box_only = not has_mask(ann)
            report.box_only += box_only
            refs.append(Reference(int(ann["id"]), int(ann["image_id"]), images[int(ann["image_id"])]["file_name"],
                                  cat, tuple(float(v) for v in ann["bbox"]), None if box_only else ann["segmentation"]))
    logger.info("reference sampler: %s", report.summary())
    return refs, report


UNLISTED = "category not in categories"


def _count_unlisted(coco: dict, report: SampleReport) -> None:
    """Annotations whose category ``categories`` does not list are unusable: count them, not drop silently."""
    from .coco_checks import missing_categories

    unlisted = sum(missing_categories(coco).values())
    if unlisted:
        report.skipped[UNLISTED] += unlisted


def _refuse_unannotated(coco: dict, cats: dict[int, str], empty_ids: Sequence[int], annotated: dict[int, int]) -> None:
    """Classes with no annotation at all get their own message (not "crowd/tiny/border"),
    pointing at annotations filed under category ids that ``categories`` does not list."""
    from .coco_checks import missing_categories

    bare = [c for c in empty_ids if not annotated.get(c)]
    if not bare:
        return
    unlisted = missing_categories(coco)
    hint = (f"; {sum(unlisted.values())} annotation(s) have category ids {sorted(unlisted)} that 'categories' "
            "does not list: fix their category_id or add those categories" if unlisted else
            "; add references for them or restrict the classes (--classes)")
    raise ValueError(f"class(es) {', '.join(f'{cats[c]!r} (id {c})' for c in bare)} have no annotation at all{hint}")


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO polygon list, RLE or uncompressed RLE as an ``(H, W)`` bool mask."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"unsupported COCO segmentation of type {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


def reference_mask(ref: Reference, image: np.ndarray, box_prompter: BoxPrompter | None) -> np.ndarray:
    """The reference's ``(H, W)`` bool mask: decoded, or from a SAM2 box prompt if box-only."""
    height, width = image.shape[:2]
    if ref.segmentation is not None:
        return decode_segmentation(ref.segmentation, height, width)
    if box_prompter is None:
        raise ValueError(
            f"annotation {ref.ann_id} (image {ref.file_name}) has a box but no segmentation; pass a SAM2 model "
            "(--sam2-config/--sam2-ckpt) so box prompts can turn it into a mask"
        )
    x, y, w, h = ref.bbox
    return np.asarray(box_prompter(image, np.array([[x, y, x + w, y + h]], dtype=np.float32))[0], dtype=bool)


def sam2_box_prompter(predictor, dtype: str = "fp32") -> BoxPrompter:
    """Box prompts through upstream ``SAM2ImagePredictor`` (single mask per box).

    ``dtype`` (``fp32``/``bf16``/``fp16``): the image encoder runs under autocast with pre-cast
    frozen weights and its features are cast back to fp32; the few box decodes per reference
    image run in fp32 (cheap, and the masks are thresholded)."""
    from ..precision import check_dtype, compute_in

    model = predictor.model
    dtype = check_dtype(dtype, predictor.device)

    def prompt(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if dtype == "fp32":
            predictor.set_image(image)
        else:
            with compute_in(dtype, predictor.device, model.image_encoder):
                predictor.set_image(image)
            feats = predictor._features
            predictor._features = {"image_embed": feats["image_embed"].float(),
                                   "high_res_feats": [f.float() for f in feats["high_res_feats"]]}
        masks, _, _ = predictor.predict(box=boxes, multimask_output=False)
        masks = np.asarray(masks)
        return (masks.reshape(len(boxes), *masks.shape[-2:]) > 0)

    return prompt
