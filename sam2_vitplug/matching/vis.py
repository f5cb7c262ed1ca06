"""Overlay PNGs of few-shot detections (for people to look at next to the results JSON)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import atomic_write_bytes


def overlay(image: np.ndarray, results: list[dict], names: dict[int, str], alpha: float = 0.5) -> np.ndarray:
    """``(H, W, 3)`` uint8 with each detection's mask tinted and its box and label drawn."""
    from PIL import Image, ImageDraw
    from pycocotools import mask as mask_utils

    out = image.astype(np.float32).copy()
    rng = np.random.default_rng(0)
    colours = {}
    for r in results:
        colour = colours.setdefault(r["category_id"], rng.integers(40, 255, 3).astype(np.float32))
        rle = dict(r["segmentation"], counts=r["segmentation"]["counts"].encode("ascii"))
        mask = mask_utils.decode(rle).astype(bool)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    canvas = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for r in results:
        x, y, w, h = r["bbox"]
        colour = tuple(int(c) for c in colours[r["category_id"]])
        draw.rectangle([x, y, x + w, y + h], outline=colour)
        draw.text((x + 2, y + 2), f"{names.get(r['category_id'], r['category_id'])} {r['score']:.2f}", fill=colour)
    return np.asarray(canvas)


def write_overlay(path: str | os.PathLike, image: np.ndarray, results: list[dict], names: dict[int, str]) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(overlay(image, results, names)).save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())
