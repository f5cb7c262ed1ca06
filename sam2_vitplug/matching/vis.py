"""Overlay PNGs of few-shot detections (for people to look at next to the results JSON)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import atomic_write_bytes


def _colour(category_id: int) -> np.ndarray:
    """A fixed colour per class (the same in the prediction and the ground-truth panel)."""
    return np.random.default_rng(int(category_id)).integers(40, 255, 3).astype(np.float32)


def _mask(entry: dict, height: int, width: int) -> np.ndarray | None:
    from .references import decode_segmentation

    seg = entry.get("segmentation")
    return decode_segmentation(seg, height, width) if seg else None


def draw_label(draw, xy: tuple[float, float], text: str, colour: tuple[int, int, int]) -> None:
    """``text`` on a filled box of the class colour, in black or white (whichever contrasts more),
    so a label stays readable on any image."""
    x, y = xy
    left, top, right, bottom = draw.textbbox((0, 0), text)
    width, height = draw.im.size
    x, y = max(2, min(x, width - right - 3)), max(2, min(y, height - bottom - 3))  # keep it inside the picture
    left, top, right, bottom = draw.textbbox((x, y), text)
    draw.rectangle([left - 2, top - 2, right + 2, bottom + 2], fill=colour)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    draw.text((x, y), text, fill=(0, 0, 0) if luminance > 128 else (255, 255, 255))


def overlay(image: np.ndarray, results: list[dict], names: dict[int, str], alpha: float = 0.5) -> np.ndarray:
    """``(H, W, 3)`` uint8 with each detection's (or annotation's) mask tinted and its box and a
    label (class, and score when there is one) drawn on a contrasting box."""
    from PIL import Image, ImageDraw

    height, width = image.shape[:2]
    out = image.astype(np.float32).copy()
    for r in results:
        mask = _mask(r, height, width)
        if mask is not None:
            out[mask] = (1 - alpha) * out[mask] + alpha * _colour(r["category_id"])
    canvas = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for r in results:
        x, y, w, h = r["bbox"]
        colour = tuple(int(c) for c in _colour(r["category_id"]))
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=2)
        label = str(names.get(r["category_id"], r["category_id"]))
        if "score" in r:
            label += f" {r['score']:.2f}"
        draw_label(draw, (x + 3, y + 3), label, colour)
    return np.asarray(canvas)


def side_by_side(left: np.ndarray, right: np.ndarray, titles: tuple[str, str], gap: int = 8) -> np.ndarray:
    """Two panels of one image with a white gap and a title on each."""
    from PIL import Image, ImageDraw

    height, width = left.shape[:2]
    canvas = np.full((height, 2 * width + gap, 3), 255, np.uint8)
    canvas[:, :width], canvas[:, width + gap:] = left, right
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for x, title in zip((0, width + gap), titles):
        draw_label(draw, (x + 3, height - 14), title, (0, 0, 0))
    return np.asarray(picture)


def write_overlay(path: str | os.PathLike, image: np.ndarray, results: list[dict], names: dict[int, str],
                  ground_truth: list[dict] | None = None) -> None:
    """The overlay PNG at ``path`` (atomic); with ``ground_truth`` (COCO annotations) the
    prediction on the left and the ground truth on the right."""
    import io

    from PIL import Image

    picture = overlay(image, results, names)
    if ground_truth is not None:
        picture = side_by_side(picture, overlay(image, ground_truth, names), ("prediction", "ground truth"))
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())


def write_overlays(folder: str | os.PathLike, images: Sequence, image_dir: str | os.PathLike, results: list[dict],
                   names: dict[int, str], *, min_score: float = 0.3, annotations: list[dict] | None = None) -> int:
    """``<folder>/<image id>.png`` for each of ``images`` (``ImageEntry``s): the detections scoring
    at least ``min_score`` and, with ``annotations``, the ground truth of the ``names`` classes
    beside them. Returns how many were written."""
    from ..images import load_rgb

    for entry in images:
        truth = None if annotations is None else [a for a in annotations if int(a["image_id"]) == entry.image_id
                                                  and int(a["category_id"]) in names]
        write_overlay(Path(folder) / f"{entry.image_id}.png", load_rgb(Path(image_dir) / entry.file_name),
                      [r for r in results if r["image_id"] == entry.image_id and r["score"] >= min_score],
                      names, ground_truth=truth)
    return len(images)
