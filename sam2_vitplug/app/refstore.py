"""The references the page made, kept as a COCO instances file (RLE masks).

Why COCO: ``fewshot memory --refs`` reads exactly this file, so the bank the page builds can be
rebuilt from the command line. Every change is written at once (atomically), and an existing
file is read back at start, so a restarted page keeps its references.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..matching.io import atomic_write_json, load_coco_json
from .masks import rle_stats, to_rle
from .paths import BadRequest, check_name

MAX_CLASS_NAME = 64


def check_class_name(name: object) -> str:
    """A class name: 1-64 printable characters, stripped."""
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("type a class name for this object")
    name = name.strip()
    if len(name) > MAX_CLASS_NAME or not name.isprintable():
        raise BadRequest(f"a class name must be at most {MAX_CLASS_NAME} printable characters")
    return name


@dataclass
class RefObject:
    """One reference object: its image, class and mask."""

    id: int
    file_name: str
    width: int
    height: int
    class_name: str
    rle: dict
    bbox: list[float]
    area: float
    score: float


class RefStore:
    """Reference objects of the session, saved to ``path`` on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.objects: list[RefObject] = []
        self.classes: list[str] = []  # category id = index + 1, stable for the session
        if path.is_file():
            self._load()

    def _load(self) -> None:
        coco = load_coco_json(self.path)
        names = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
        images = {int(im["id"]): im for im in coco["images"]}
        self.classes = [names[c] for c in sorted(names)]
        for ann in coco["annotations"]:
            im = images[int(ann["image_id"])]
            self.objects.append(RefObject(int(ann["id"]), str(im["file_name"]), int(im["width"]), int(im["height"]),
                                          names[int(ann["category_id"])], dict(ann["segmentation"]),
                                          list(ann["bbox"]), float(ann["area"]), float(ann.get("score", 0.0))))

    def add(self, file_name: str, width: int, height: int, class_name: str, mask: np.ndarray, score: float) -> RefObject:
        """Store a new object (an empty mask is refused) and save."""
        check_name(file_name)
        class_name = check_class_name(class_name)
        if not mask.any():
            raise BadRequest("the mask is empty: click on the object itself or drag a box around it")
        rle = to_rle(mask)
        bbox, area = rle_stats(rle)
        with self._lock:
            if class_name not in self.classes:
                self.classes.append(class_name)
            obj = RefObject(max((o.id for o in self.objects), default=0) + 1, file_name, width, height, class_name,
                            rle, bbox, area, round(score, 4))
            self.objects.append(obj)
            self._save()
        return obj

    def delete(self, obj_id: object) -> None:
        """Remove one object by id and save."""
        with self._lock:
            keep = [o for o in self.objects if o.id != obj_id]
            if len(keep) == len(self.objects):
                raise BadRequest(f"no reference object {obj_id!r}")
            self.objects = keep
            self._save()

    def summary(self) -> list[dict]:
        """Objects as the page lists them (no masks)."""
        return [{k: v for k, v in asdict(o).items() if k != "rle"} for o in self.objects]

    def of_image(self, file_name: str) -> list[RefObject]:
        return [o for o in self.objects if o.file_name == file_name]

    def to_coco(self) -> dict:
        """The COCO instances dict: image ids in file-name order, category ids by first naming."""
        names = sorted({o.file_name for o in self.objects})
        image_ids = {n: i + 1 for i, n in enumerate(names)}
        sizes = {o.file_name: (o.width, o.height) for o in self.objects}
        used = [c for c in self.classes if any(o.class_name == c for o in self.objects)]
        return {
            "info": {"description": "references made with sam2-vitplug app"},
            "images": [{"id": image_ids[n], "file_name": n, "width": sizes[n][0], "height": sizes[n][1]} for n in names],
            "annotations": [{"id": o.id, "image_id": image_ids[o.file_name], "category_id": self.classes.index(o.class_name) + 1,
                             "segmentation": o.rle, "area": o.area, "bbox": o.bbox, "iscrowd": 0, "score": o.score}
                            for o in self.objects],
            "categories": [{"id": self.classes.index(c) + 1, "name": c} for c in used],
        }

    def _save(self) -> None:
        atomic_write_json(self.path, self.to_coco(), indent=1)
