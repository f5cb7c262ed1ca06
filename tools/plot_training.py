#!/usr/bin/env python
"""Draw per-step training loss curves of one or more training_ext runs to a PNG (and a JSON of the values).

Reads the tensorboard events upstream's trainer writes (``<experiment>/tensorboard``). Drawn with
matplotlib (Agg canvas, no display): log-scale y, one colour per run, raw values thin and a
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
    from sam2_vitplug.heads.plots import FONT_SIZE, new_figure, save_png

    kept = {label: [(s, v) for s, v in curve if v > 0 and math.isfinite(v)] for label, curve in curves.items()}
    if not any(kept.values()):
        raise ValueError("no positive finite loss values to draw")
    figure = new_figure(*size)
    axes = figure.subplots()
    for i, (label, curve) in enumerate(kept.items()):
        colour = f"C{i % 10}"
        steps, values = [s for s, _ in curve], [v for _, v in curve]
        axes.plot(steps, values, color=colour, linewidth=0.8, alpha=0.4)
        axes.plot(steps, _smooth(values, window), color=colour, linewidth=2.5,
                  label=f"{label} ({len(curve)} steps, mean of {window})")
    axes.set_yscale("log")
    axes.set_xlabel("step", fontsize=FONT_SIZE)
    axes.set_ylabel("loss (log scale)", fontsize=FONT_SIZE)
    axes.set_title(title, fontsize=FONT_SIZE + 1)
    axes.tick_params(labelsize=FONT_SIZE)
    axes.grid(True, which="major", color="0.88")
    axes.legend(fontsize=FONT_SIZE)
    figure.tight_layout()
    save_png(figure, out)


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
