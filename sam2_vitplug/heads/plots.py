"""Line plots of training curves drawn with Pillow (no matplotlib dependency)."""

from __future__ import annotations

import math
import os
from typing import Sequence

from PIL import Image, ImageDraw

from ..atomic import atomic_target

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14)]
GRID = (225, 225, 225)
INK = (40, 40, 40)


def font(size: int = 14):
    """Pillow's scalable default font at ``size`` px (the bitmap fallback is 8 px, too small to read)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 5 x 10^k steps) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _label(value: float) -> str:
    return f"{value:.4g}"


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, ylabel: str,
           series: dict[str, Sequence[tuple[float, float]]], empty: str = "no data yet") -> None:
    """One chart: title, y ticks with grid lines and labels, integer epoch ticks, axis names,
    a legend; all text at a readable size."""
    x0, y0, x1, y1 = box
    small, big = font(13), font(15)
    left, bottom = x0 + 62, y1 - 40  # plot area inside the box: room for tick labels and axis names
    right, top = x1 - 14, y0 + 46
    draw.text((x0 + 4, y0 + 2), title, fill=INK, font=big)
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    draw.rectangle((left, top, right, bottom), outline=INK)
    if not points:
        draw.text((left + 10, top + 10), empty, fill=(120, 120, 120), font=small)
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    yticks = nice_ticks(min(ys), max(ys)) if max(ys) > min(ys) else [min(ys)]
    ymin, ymax = min(yticks[0], min(ys)), max(yticks[-1], max(ys))
    if ymax == ymin:
        ymin, ymax = ymin - (abs(ymin) or 1) * 0.1, ymax + (abs(ymax) or 1) * 0.1
        yticks = [ymin, (ymin + ymax) / 2, ymax]
    xmin, xmax = min(xs), max(xs)
    if xmax == xmin:
        xmin, xmax = xmin - 1, xmax + 1
    sx = lambda x: left + (x - xmin) / (xmax - xmin) * (right - left)  # noqa: E731
    sy = lambda y: bottom - (y - ymin) / (ymax - ymin) * (bottom - top)  # noqa: E731
    for tick in yticks:
        y = sy(tick)
        draw.line((left, y, right, y), fill=GRID)
        text = _label(tick)
        draw.text((left - 6 - draw.textlength(text, font=small), y - 7), text, fill=INK, font=small)
    step = max(1, math.ceil((xmax - xmin) / 8))
    for tick in range(math.ceil(xmin), math.floor(xmax) + 1, step):
        x = sx(tick)
        draw.line((x, bottom, x, bottom + 4), fill=INK)
        draw.text((x - draw.textlength(str(tick), font=small) / 2, bottom + 6), str(tick), fill=INK, font=small)
    draw.text(((left + right) / 2 - 20, bottom + 22), "epoch", fill=INK, font=small)
    draw.text((x0 + 2, top - 18), ylabel, fill=INK, font=small)
    draw.rectangle((left, top, right, bottom), outline=INK)  # over the grid lines
    for k, (name, pts) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        pts = [(sx(x), sy(y)) for x, y in pts if math.isfinite(y)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        draw.text((right - 8 - draw.textlength(name, font=small), top + 6 + 16 * k), name, fill=color, font=small)


def plot_history(history: list[dict], path: str | os.PathLike) -> None:
    """Write one PNG with three panels: loss, pixel accuracy, mIoU against epoch."""
    width, height = 1260, 400
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)

    def pick(key: str) -> list[tuple[float, float]]:
        return [(h["epoch"], float(h[key])) for h in history if h.get(key) is not None]

    panels = [
        ("training loss", "loss", {"train": pick("train_loss")}),
        ("validation pixel accuracy", "accuracy", {"val": pick("pixel_accuracy")}),
        ("validation mIoU", "mIoU", {"val": pick("mIoU")}),
    ]
    for i, (title, ylabel, series) in enumerate(panels):
        _panel(draw, (10 + i * 415, 8, 410 + i * 415, height - 8), title, ylabel, series,
               empty="no data yet" if i == 0 else "no validation (train with --validate)")
    with atomic_target(path, suffix=".png") as tmp:
        image.save(tmp)
