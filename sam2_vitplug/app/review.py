"""Review and export of a run's detections.

Why here and not in the page: the decisions (accept, reject, class fix) and the export rule live
in one place the tests can call. A detection's id is its index in ``results.json``. Exported:
every detection scoring at least the slider's minimum and not rejected, plus those accepted by
hand whatever their score; a fixed class replaces ``category_id``. The files are the ones
``fewshot run`` writes (a COCO results list), written atomically.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

from ..matching.io import atomic_write_bytes, atomic_write_json, load_coco_json
from .masks import anchor, from_rle, png_data_url
from .paths import BadRequest

STATUSES = ("", "accepted", "rejected")


class Review:
    """The detections of the last run and the decisions taken on them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.results: list[dict] = []
        self.images: list[dict] = []  # targets.json images
        self.categories: list[dict] = []
        self.status: dict[int, str] = {}
        self.category: dict[int, int] = {}
        self._anchors: dict[int, list[int] | None] = {}

    def load(self, results_path: Path, targets_path: Path) -> None:
        """Take a finished run's results (decisions start empty)."""
        results = json.loads(results_path.read_text())
        targets = load_coco_json(targets_path)
        with self._lock:
            self.results, self.images, self.categories = results, targets["images"], targets["categories"]
            self.status, self.category, self._anchors = {}, {}, {}

    def _check_id(self, det_id: object) -> int:
        if not isinstance(det_id, int) or isinstance(det_id, bool) or not 0 <= det_id < len(self.results):
            raise BadRequest(f"no detection {det_id!r}; run first, then review")
        return det_id

    def decide(self, det_id: object, status: object = None, category_id: object = None) -> dict:
        """Accept/reject (``status``, '' to undo) and/or fix the class of one detection."""
        with self._lock:
            i = self._check_id(det_id)
            if status is not None:
                if status not in STATUSES:
                    raise BadRequest(f"status must be accepted, rejected or '' , got {status!r}")
                self.status[i] = str(status)
            if category_id is not None:
                if category_id not in {c["id"] for c in self.categories}:
                    raise BadRequest(f"unknown class id {category_id!r}")
                self.category[i] = int(category_id)
            return self._row(i)

    def _row(self, i: int) -> dict:
        r = self.results[i]
        return {"id": i, "image_id": r["image_id"], "score": r["score"], "bbox": r["bbox"],
                "category_id": self.category.get(i, r["category_id"]), "status": self.status.get(i, "")}

    def overview(self) -> dict:
        """Targets, classes and every detection (no masks)."""
        with self._lock:
            return {"images": self.images, "categories": self.categories,
                    "detections": [self._row(i) for i in range(len(self.results))]}

    def masks(self, image_id: int) -> list[dict]:
        """The detections of one target with their mask PNGs and anchor points."""
        with self._lock:
            ids = [i for i, r in enumerate(self.results) if r["image_id"] == image_id]
            rows = []
            for i in ids:
                mask = from_rle(self.results[i]["segmentation"])
                if i not in self._anchors:
                    self._anchors[i] = anchor(mask)
                rows.append({**self._row(i), "mask": png_data_url(mask), "anchor": self._anchors[i]})
            return rows

    def kept(self, min_score: float) -> list[dict]:
        """The detections the export writes (see the module docstring)."""
        with self._lock:
            out = []
            for i, r in enumerate(self.results):
                status = self.status.get(i, "")
                if status == "accepted" or (status != "rejected" and r["score"] >= min_score):
                    out.append({**r, "category_id": self.category.get(i, r["category_id"])})
            return out

    def counts(self, min_score: float) -> dict[int, int]:
        """Exported detections per class id."""
        return dict(Counter(r["category_id"] for r in self.kept(min_score)))

    def export(self, out_dir: Path, refs_path: Path, min_score: object) -> dict:
        """Write ``results.json`` (accepted detections) and ``references.json`` under ``out_dir``."""
        if not self.results and not self.images:
            raise BadRequest("nothing to export yet: run first")
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0 <= min_score <= 1:
            raise BadRequest(f"the minimum score must be a number in [0, 1], got {min_score!r}")
        kept = self.kept(float(min_score))
        atomic_write_json(out_dir / "results.json", kept)
        atomic_write_bytes(out_dir / "references.json", refs_path.read_bytes())  # atomically too
        return {"results": str(out_dir / "results.json"), "references": str(out_dir / "references.json"),
                "detections": len(kept), "per_class": self.counts(float(min_score))}
