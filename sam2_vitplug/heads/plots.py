"""Line plots of training curves drawn with Pillow (no matplotlib dependency)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from ..atomic import atomic_target

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14)]


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
           series: dict[str, Sequence[tuple[float, float]]]) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if not points:
        draw.text((x0 + 10, y0 + 10), "no data yet", fill=(120, 120, 120))
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xmin, xmax = min(xs), max(xs)
    ymin, ymax = min(ys), max(ys)
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        ymax = ymin + (abs(ymin) or 1) * 0.1
    sx = lambda x: x0 + 40 + (x - xmin) / (xmax - xmin) * (x1 - x0 - 50)  # noqa: E731
    sy = lambda y: y1 - 20 - (y - ymin) / (ymax - ymin) * (y1 - y0 - 30)  # noqa: E731
    draw.text((x0 + 2, y0 + 4), f"{ymax:.3g}", fill=(80, 80, 80))
    draw.text((x0 + 2, y1 - 30), f"{ymin:.3g}", fill=(80, 80, 80))
    draw.text((x0 + 40, y1 - 14), f"epoch {xmin:g}", fill=(80, 80, 80))
    draw.text((x1 - 70, y1 - 14), f"{xmax:g}", fill=(80, 80, 80))
    for k, (name, pts) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        pts = [(sx(x), sy(y)) for x, y in pts if math.isfinite(y)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for x, y in pts:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        draw.text((x1 - 120, y0 + 6 + 12 * k), name, fill=color)


def plot_history(history: list[dict], path: str | os.PathLike) -> None:
    """Write one PNG with three panels: loss, pixel accuracy, mIoU against epoch."""
    width, height = 900, 300
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    def pick(key: str) -> list[tuple[float, float]]:
        return [(h["epoch"], float(h[key])) for h in history if h.get(key) is not None]
    panels = [
        ("loss", {"train loss": pick("train_loss")}),
        ("pixel accuracy", {"val": pick("pixel_accuracy")}),
        ("mIoU", {"val": pick("mIoU")}),
    ]
    for i, (title, series) in enumerate(panels):
        _panel(draw, (10 + i * 300, 25, 290 + i * 300, height - 10), title, series)
    with atomic_target(path, suffix=".png") as tmp:
        image.save(tmp)
