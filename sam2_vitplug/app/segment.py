"""Interactive SAM2: points and boxes from the page to a mask, through the library's predictor.

Why a separate module: the model is built once, lazily (the page opens before it is ready), by
the same helper ``fewshot`` uses for its SAM2 (``sam2_presets.build_named_sam2``, so a config name
means the same thing in both), wrapped by :func:`sam2_vitplug.build.make_image_predictor`. One
lock: upstream's predictor holds one image at a time.
"""

from __future__ import annotations

import argparse
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .paths import BadRequest


@dataclass(frozen=True)
class Prompt:
    """What the page clicked: points ``(x, y, label)`` (1 positive, 0 negative) and/or a box ``xyxy``."""

    points: tuple[tuple[float, float, int], ...] = ()
    box: tuple[float, float, float, float] | None = None

    @classmethod
    def parse(cls, body: dict, width: int, height: int) -> "Prompt":
        """Checked prompt from the page's JSON: numbers inside the image, labels 0/1."""
        raw_points, raw_box = body.get("points") or [], body.get("box")
        if not isinstance(raw_points, list) or len(raw_points) > 64:
            raise BadRequest("points must be a list of at most 64 [x, y, label] triples")
        points = []
        for p in raw_points:
            if not (isinstance(p, list) and len(p) == 3 and all(isinstance(v, (int, float)) for v in p)):
                raise BadRequest(f"a point must be [x, y, label], got {p!r}")
            x, y, label = float(p[0]), float(p[1]), int(p[2])
            if label not in (0, 1) or not (0 <= x <= width and 0 <= y <= height):
                raise BadRequest(f"point {p!r} is outside the {width}x{height} image or its label is not 0/1")
            points.append((x, y, label))
        box = None
        if raw_box is not None:
            if not (isinstance(raw_box, list) and len(raw_box) == 4 and all(isinstance(v, (int, float)) for v in raw_box)):
                raise BadRequest(f"box must be [x0, y0, x1, y1], got {raw_box!r}")
            x0, y0, x1, y1 = (float(v) for v in raw_box)
            box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if not any(label == 1 for *_, label in points) and box is None:
            raise BadRequest("click a positive point on the object or drag a box around it")
        return cls(tuple(points), box)


class Segmenter:
    """SAM2 image predictor for one config, built on first use."""

    def __init__(self, sam2_config: str, sam2_ckpt: str | None, sam2_override: Sequence[str], device: str) -> None:
        self._args = argparse.Namespace(sam2_config=sam2_config, sam2_ckpt=sam2_ckpt, sam2_override=list(sam2_override))
        self._device = device
        self._lock = threading.Lock()
        self._predictor = None
        self._image: Path | None = None

    def _ready(self):
        if self._predictor is None:
            from ..build import make_image_predictor
            from ..sam2_presets import build_named_sam2

            a = self._args
            self._predictor = make_image_predictor(build_named_sam2(a.sam2_config, a.sam2_ckpt, self._device, a.sam2_override))
        return self._predictor

    def preload(self) -> None:
        """Build the model now (a background thread at start); a failure waits for the first click to report it."""
        try:
            with self._lock:
                self._ready()
        except Exception as err:  # noqa: BLE001 - the first click reports it again, in the page
            print(f"warning: SAM2 '{self._args.sam2_config}' could not be built ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                  "the page will say so on the first click", file=sys.stderr)

    def predict(self, path: Path, rgb: np.ndarray, prompt: Prompt) -> tuple[np.ndarray, float]:
        """(``(H, W)`` bool mask, SAM2's predicted IoU). One positive point alone asks for three
        masks and keeps the best (SAM's advice for ambiguous clicks); more prompts ask for one."""
        import torch

        with self._lock, torch.inference_mode():
            predictor = self._ready()
            if self._image != path:
                predictor.set_image(rgb)
                self._image = path
            coords = np.array([p[:2] for p in prompt.points], dtype=np.float32) if prompt.points else None
            labels = np.array([p[2] for p in prompt.points], dtype=np.int32) if prompt.points else None
            box = np.array(prompt.box, dtype=np.float32) if prompt.box is not None else None
            multi = len(prompt.points) == 1 and box is None
            masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box,
                                                 multimask_output=multi)
        best = int(np.argmax(scores))
        return np.asarray(masks[best]) > 0, float(scores[best])
