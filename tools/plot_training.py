#!/usr/bin/env python
"""Draw per-step training loss curves of one or more training_ext runs to a PNG (and a JSON of the values).

Reads the tensorboard events upstream's trainer writes (``<experiment>/tensorboard``). Drawn with
Pillow (no plotting library needed): log-scale y, one colour per run, raw values thin and a
moving average thick.

    python tools/plot_training.py sam2_logs/tiny_cpu --out results/loss.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def draw(curves: dict[str, list[tuple[int, float]]], out: Path, title: str, window: int = 10,
         size: tuple[int, int] = (900, 520)) -> None:
    """Render ``{label: [(step, loss), ...]}`` to ``out`` (PNG), written atomically."""
    from PIL import Image, ImageDraw

    from sam2_vitplug.atomic import atomic_target
    from sam2_vitplug.heads.plots import font, nice_ticks

    small, big = font(14), font(16)
    width, height = size
    left, right, top, bottom = 80, 20, 50, 56
    image = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(image)
    points = [(s, v) for c in curves.values() for s, v in c if v > 0 and math.isfinite(v)]
    if not points:
        raise ValueError("no positive finite loss values to draw")
    s_min, s_max = min(p[0] for p in points), max(p[0] for p in points)
    y_min, y_max = math.log10(min(p[1] for p in points)), math.log10(max(p[1] for p in points))
    y_min, y_max = math.floor(y_min), max(math.ceil(y_max), math.floor(y_min) + 1)

    def xy(step: float, value: float) -> tuple[float, float]:
        fx = (step - s_min) / max(s_max - s_min, 1)
        fy = (math.log10(value) - y_min) / (y_max - y_min)
        return left + fx * (width - left - right), height - bottom - fy * (height - top - bottom)

    for decade in range(y_min, y_max + 1):
        _, y = xy(s_min, 10 ** decade)
        pen.line([left, y, width - right, y], fill=(225, 225, 225))
        text = f"{10 ** decade:g}"
        pen.text((left - 8 - pen.textlength(text, font=small), y - 8), text, fill="black", font=small)
    pen.rectangle([left, top, width - right, height - bottom], outline="black")  # over the grid lines
    for step in [t for t in nice_ticks(s_min, s_max, 6) if s_min <= t <= s_max] or [s_min]:
        x, _ = xy(step, 10 ** y_min)
        pen.line([x, height - bottom, x, height - bottom + 5], fill="black")
        pen.text((x - pen.textlength(str(int(step)), font=small) / 2, height - bottom + 8), f"{int(step)}",
                 fill="black", font=small)
    pen.text((width // 2 - 20, height - 26), "step", fill="black", font=small)
    pen.text((8, top - 22), "loss (log scale)", fill="black", font=small)
    pen.text((left, 8), title, fill="black", font=big)
    for i, (label, curve) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        curve = [(s, v) for s, v in curve if v > 0 and math.isfinite(v)]
        if len(curve) > 1:
            pen.line([xy(s, v) for s, v in curve], fill=tuple(int(c * 0.4 + 153) for c in colour), width=1)
            smooth = _smooth([v for _, v in curve], window)
            pen.line([xy(s, v) for (s, _), v in zip(curve, smooth)], fill=colour, width=3)
        pen.text((width - right - 300, top + 8 + 18 * i), f"{label} ({len(curve)} steps)", fill=colour, font=small)
    with atomic_target(out, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="experiment folders (launcher.experiment_log_dir)")
    parser.add_argument("--out", required=True, help="output PNG; the values go next to it as .json")
    parser.add_argument("--tag", default=None, help="tensorboard tag (default: the total training loss)")
    parser.add_argument("--window", type=int, default=10, help="moving-average window in steps")
    parser.add_argument("--device", default=None, help="unused (no model runs); accepted like every entry point")
    args = parser.parse_args(argv)
    from training_ext.logs import LOSS_TAG, read_scalars

    tag = args.tag or LOSS_TAG
    if not args.out.endswith(".png"):
        parser.error(f"--out must be a .png path, got {args.out}")
    curves = {}
    try:
        for run in args.runs:
            scalars = read_scalars(run, prefix=tag)
            if tag not in scalars:
                parser.error(f"'{run}' has no '{tag}' values; tags there: {sorted(read_scalars(run, prefix=''))[:8]}")
            label = Path(run).name
            if label in curves:  # two runs with the same folder name: add the parent folder
                label = f"{Path(run).resolve().parent.name}/{label}"
            curves[label] = scalars[tag]
        out = Path(args.out)
        draw(curves, out, title=tag, window=max(1, args.window))
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    values = out.with_suffix(".json")
    from sam2_vitplug.atomic import atomic_write_bytes

    atomic_write_bytes(values, json.dumps({"tag": tag, "curves": curves}, indent=1).encode())
    for name, curve in curves.items():
        print(f"{name}: {len(curve)} steps, loss {curve[0][1]:.3g} -> {curve[-1][1]:.3g}")
    print(f"wrote {out} and {values}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
