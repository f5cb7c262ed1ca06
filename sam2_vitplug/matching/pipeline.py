"""One target image -> COCO detections: proposals, scoring, NMS, soft merging, top-k, RLE."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .bank import MemoryBank
from .encoder import MatcherEncoder, resize_square
from .features import masked_pool, masks_to_grid, to_pixels
from .proposals import ProposalSource, Proposals, ntt_square
from .ntt_ops import mask_boxes_inclusive, merge_decay, pool_hard_upsampled, semantic_ios
from .scoring import assign_labels, class_nms, class_similarity, lowres_ios, top_k


def _score_rank(scores: torch.Tensor) -> torch.Tensor:
    """Position of each score in the stable descending order (``merging.order: score``)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return rank

logger = logging.getLogger(__name__)
NTT_SAM_SIZE = 1024  # the reference's fixed SAM2 input side


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
        bank.check_method(cfg.get("method", "ntt"))
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

    def matcher_pixels(self, image: np.ndarray, device: torch.device | str) -> torch.Tensor:
        """``(1, 3, S, S)`` matcher input in [0, 1]. ``proposals.target_resize``: ``ntt`` = the PIL
        bicubic square the SAM2 input is made from (side: the SAM2 model's, else the reference's
        1024), bicubic without antialias to S, values not clamped; ``vitplug`` = the original image
        bilinear (antialiased when shrinking) to S."""
        side = self.matcher.input_size
        if self.cfg.proposals.get("target_resize", "vitplug") == "ntt":
            model = getattr(self.source, "model", None)
            square = ntt_square(image, int(getattr(model, "image_size", NTT_SAM_SIZE)))
            pixels = torch.from_numpy(square / 255.0).permute(2, 0, 1)[None].float().to(device)
            return F.interpolate(pixels, size=(side, side), mode="bicubic", align_corners=False)
        return resize_square(to_pixels(image, device), side)

    def target_features(self, image: np.ndarray, proposals: Proposals) -> torch.Tensor:
        """``(C, h, w)`` features of the whole target image (computed once per image)."""
        if proposals.features is not None:
            return proposals.features
        if self.matcher is None:
            raise ValueError("no matcher encoder and the proposal source returned no features")
        device = getattr(self.matcher, "device", torch.device("cpu"))
        pixels = self.matcher_pixels(image, device)
        if self.hr_transforms:
            # averaged features at the low-res mask grid (capped at the encoder input size), so
            # proposals are pooled at their own resolution instead of the coarse token grid
            side = self.matcher.input_size
            size = (min(proposals.lowres.shape[-2], side), min(proposals.lowres.shape[-1], side))
            return self.matcher.encode_hr(pixels, size, self.hr_transforms,
                                          shift=self.cfg.scoring.get("hr_shift", None))[0]
        return self.matcher.encode(pixels)[0]

    def _embeddings(self, proposals: Proposals, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, C)`` unit proposal features and ``(N,)`` which of them can be scored.

        ``scoring.pooling``: ``ntt`` = mean of the features bilinearly upsampled to the mask grid
        over the hard mask (logit > 0); ``vitplug`` = soft masks area-pooled to the token grid."""
        device = features.device
        if self.cfg.scoring.pooling == "ntt":
            hard = (proposals.logits > 0) if proposals.logits is not None else (proposals.lowres > 0.5)
            hard = hard.to(device)
            return pool_hard_upsampled(features, hard), hard.flatten(1).any(1)
        if self.cfg.scoring.pooling != "vitplug":
            raise ValueError(f"scoring.pooling={self.cfg.scoring.pooling!r} is not one of ntt, vitplug")
        weights = masks_to_grid(proposals.lowres.to(device), tuple(features.shape[-2:]))
        return masked_pool(features, weights), weights.flatten(1).sum(1) > 0

    def _nms_boxes(self, proposals: Proposals) -> torch.Tensor:
        """``scoring.nms_boxes``: ``ntt`` = low-res mask boxes with inclusive max (the reference;
        ours, exclusive, is the exact pixel extent: same IoUs up to that one pixel)."""
        if self.cfg.scoring.nms_boxes == "ntt":
            hard = (proposals.logits > 0) if proposals.logits is not None else (proposals.lowres > 0.5)
            return mask_boxes_inclusive(hard)
        return proposals.boxes

    @torch.inference_mode()
    def score(self, proposals: Proposals, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Labels and final scores of ``proposals``: returns ``keep`` (indices into proposals, best
        first), ``labels`` (class index into the bank), ``scores``, ``nms_keep`` (NMS survivors in
        NMS order, before any score filter) and, when merging rendered them, ``masks``
        (full-resolution bool) for the kept ones. Every step follows a config switch
        (configs/matching/fewshot.yaml); the ntt preset reproduces the reference chain."""
        cfg, sc, mg = self.cfg, self.cfg.scoring, self.cfg.merging
        t0 = time.perf_counter()
        device = features.device
        emb, valid = self._embeddings(proposals, features)
        sim = class_similarity(emb, self.bank.prototypes.to(device))
        best, labels = assign_labels(sim)
        iou = proposals.iou.to(device)
        cand = torch.nonzero(valid).flatten()
        boxes = self._nms_boxes(proposals).to(device)
        kept = cand[class_nms(boxes[cand], iou[cand], labels[cand], sc.nms_iou)]
        if sc.get("nms_cap") is not None:
            kept = kept[:int(sc.nms_cap)]
        nms_keep = kept
        scores = best[kept] * iou[kept] if sc.iou_factor else best[kept]
        if sc.min_score is None:  # the reference drops non-positive similarities before merging
            pos = scores > 0
            kept, scores = kept[pos], scores[pos]
        t1 = time.perf_counter()
        full = None
        if mg.enabled and len(kept):
            rank = None if mg.order == "nms" else _score_rank(scores)
            if mg.order not in ("nms", "score"):
                raise ValueError(f"merging.order={mg.order!r} is not one of nms, score")
            if mg.masks == "full":
                full = proposals.render(kept) if proposals.render is not None else proposals.lowres[kept] > 0.5
                ios = semantic_ios(full, labels[kept], emb[kept], rank)
            elif mg.masks == "lowres":
                grid = int(mg.grid)
                low = proposals.lowres.to(device)
                masks = masks_to_grid(low[kept], (grid, grid)) if low.shape[-1] > grid else low[kept]
                ios = lowres_ios(masks, labels[kept], emb[kept], mg.mask_threshold, rank)
            else:
                raise ValueError(f"merging.masks={mg.masks!r} is not one of full, lowres")
            scores = scores * merge_decay(ios.to(scores.device), str(mg.decay))
        t2 = time.perf_counter()
        order = top_k(scores, int(cfg.output.top_k))
        if sc.min_score is not None:
            order = order[scores[order] > sc.min_score]
        self.timings.update(scoring=t1 - t0, merging=t2 - t1)
        out = {"keep": kept[order], "labels": labels[kept[order]], "scores": scores[order], "nms_keep": nms_keep}
        if full is not None:
            out["masks"] = full[order.cpu()]
        return out

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
        masks = out["masks"] if "masks" in out else proposals.render(out["keep"])
        rles = encode_rle(masks)
        ntt_boxes = self.cfg.output.boxes == "ntt"
        if ntt_boxes:
            # the reference's convention (inclusive max: one pixel narrower than toBbox), kept so
            # results compare with its numbers; empty masks are kept too, as there
            boxes = mask_boxes_inclusive(masks.bool()).tolist()
            bboxes = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes]
        else:
            bboxes = [mask_utils.toBbox(rle).tolist() for rle in rles]
        self.timings["output"] = time.perf_counter() - t3
        results = []
        for rle, box, label, score in zip(rles, bboxes, out["labels"].tolist(), out["scores"].tolist()):
            if not ntt_boxes and mask_utils.area(rle) == 0:
                continue
            results.append({"image_id": int(image_id), "category_id": int(self.bank.class_ids[label]),
                            "bbox": [round(float(v), 2) for v in box], "score": round(float(score), 6),
                            "segmentation": rle})
        return results
