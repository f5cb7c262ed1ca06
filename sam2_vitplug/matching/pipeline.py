"""One target image -> COCO detections: proposals, scoring, NMS, soft merging, top-k, RLE."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from .bank import MemoryBank
from .encoder import MatcherEncoder, resize_square
from .features import masked_pool, masks_to_grid, to_pixels
from .proposals import ProposalSource, Proposals
from .scoring import assign_labels, class_nms, class_similarity, soft_merge, top_k

logger = logging.getLogger(__name__)


def encode_rle(masks: torch.Tensor) -> list[dict]:
    """``(k, H, W)`` bool -> COCO RLE dicts with ``counts`` as str."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    arr = np.asfortranarray(masks.cpu().numpy().astype(np.uint8).transpose(1, 2, 0))
    rles = mask_utils.encode(arr)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


class FewShotPredictor:
    """Scores proposals of a :class:`ProposalSource` against a :class:`MemoryBank`.

    ``matcher`` may be None when the source returns features itself (shared backbone).
    ``timings`` holds the seconds of each stage of the last image.
    """

    def __init__(self, bank: MemoryBank, source: ProposalSource, matcher: MatcherEncoder | None, cfg: Any) -> None:
        if matcher is not None:
            bank.check_encoder(matcher)
        self.bank, self.source, self.matcher, self.cfg = bank, source, matcher, cfg
        self.timings: dict[str, float] = {}
        self.hr_transforms = int(cfg.scoring.get("hr_transforms", 0) or 0)
        if self.hr_transforms:
            self._check_hr(matcher)

    def _check_hr(self, matcher: MatcherEncoder | None) -> None:
        """``scoring.hr_transforms`` needs a transformers matcher and a valid K/shift (checked
        here, before any image is processed)."""
        k = self.hr_transforms
        if k < 0:
            raise ValueError(f"scoring.hr_transforms must be >= 0 (0 = off), got {k}")
        if self.cfg.proposals.get("shared_backbone", False):
            raise ValueError("--hr-transforms cannot be combined with --shared-backbone (that mode scores with the "
                             "SAM2 trunk's own tokens); drop one of them")
        if matcher is None or not hasattr(matcher, "hr_extractor"):
            raise ValueError(f"--hr-transforms needs a transformers matcher encoder; "
                             f"{type(matcher).__name__} has no encode_hr")
        matcher.hr_extractor(k, shift=self.cfg.scoring.get("hr_shift", None))

    def target_features(self, image: np.ndarray, proposals: Proposals) -> torch.Tensor:
        """``(C, h, w)`` features of the whole target image (computed once per image)."""
        if proposals.features is not None:
            return proposals.features
        if self.matcher is None:
            raise ValueError("no matcher encoder and the proposal source returned no features")
        device = getattr(self.matcher, "device", torch.device("cpu"))
        pixels = resize_square(to_pixels(image, device), self.matcher.input_size)
        if self.hr_transforms:
            # averaged features at the low-res mask grid (capped at the encoder input size), so
            # proposals are pooled at their own resolution instead of the coarse token grid
            side = self.matcher.input_size
            size = (min(proposals.lowres.shape[-2], side), min(proposals.lowres.shape[-1], side))
            return self.matcher.encode_hr(pixels, size, self.hr_transforms,
                                          shift=self.cfg.scoring.get("hr_shift", None))[0]
        return self.matcher.encode(pixels)[0]

    @torch.inference_mode()
    def score(self, proposals: Proposals, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Labels and final scores of ``proposals``: returns ``keep`` (indices into proposals, best
        first), ``labels`` (class index into the bank) and ``scores`` for the kept ones."""
        cfg, t = self.cfg, {}
        t0 = time.perf_counter()
        device = features.device
        lowres = proposals.lowres.to(device)
        weights = masks_to_grid(lowres, tuple(features.shape[-2:]))
        valid = weights.flatten(1).sum(1) > 0  # empty proposals cannot be scored
        emb = masked_pool(features, weights)
        sim = class_similarity(emb, self.bank.prototypes.to(device))
        best, labels = assign_labels(sim)
        iou = proposals.iou.to(device)
        cand = torch.nonzero(valid).flatten()
        kept = cand[class_nms(proposals.boxes.to(device)[cand], iou[cand], labels[cand], cfg.scoring.nms_iou)]
        scores = best[kept] * iou[kept]
        t1 = time.perf_counter()
        if cfg.merging.enabled:
            grid = int(cfg.merging.grid)
            masks = masks_to_grid(lowres[kept], (grid, grid)) if lowres.shape[-1] > grid else lowres[kept]
            scores = soft_merge(masks, scores, labels[kept], emb[kept], cfg.merging.mask_threshold)
        t2 = time.perf_counter()
        order = top_k(scores, int(cfg.output.top_k))
        order = order[scores[order] > cfg.scoring.min_score]
        self.timings.update(scoring=t1 - t0, merging=t2 - t1)
        return {"keep": kept[order], "labels": labels[kept[order]], "scores": scores[order]}

    def predict(self, image: np.ndarray, image_id: int) -> list[dict]:
        """COCO result dicts for one ``(H, W, 3)`` uint8 image."""
        from pycocotools import mask as mask_utils

        self.timings = {}
        t0 = time.perf_counter()
        proposals = self.source(image, image_id)
        t1 = time.perf_counter()
        self.timings.update(getattr(self.source, "timings", {}) or {"proposals": t1 - t0})
        features = self.target_features(image, proposals)
        t2 = time.perf_counter()
        self.timings["matcher_encoder"] = t2 - t1
        out = self.score(proposals, features)
        t3 = time.perf_counter()
        masks = proposals.render(out["keep"])
        rles = encode_rle(masks)
        self.timings["output"] = time.perf_counter() - t3
        results = []
        for rle, label, score in zip(rles, out["labels"].tolist(), out["scores"].tolist()):
            if mask_utils.area(rle) == 0:
                continue
            results.append({"image_id": int(image_id), "category_id": int(self.bank.class_ids[label]),
                            "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle).tolist()],
                            "score": round(float(score), 6), "segmentation": rle})
        return results
