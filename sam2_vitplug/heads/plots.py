"""Training-curve plots with matplotlib's Agg canvas.

``Figure`` + ``FigureCanvasAgg`` rather than pyplot: no display is needed, and no global backend
or pyplot state is touched for the other code in the process. matplotlib is imported when a plot
is drawn, so importing the heads package stays light.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Sequence

from ..atomic import atomic_target

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FONT_SIZE = 11  # points at 100 dpi: readable tick labels on a 400 px high PNG


def new_figure(width_px: int, height_px: int, dpi: int = 100) -> Figure:
    """A figure of exactly ``width_px x height_px`` pixels, bound to its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str | os.PathLike) -> None:
    """Write ``figure`` as PNG atomically (no half-written file; the umask's mode)."""
    with atomic_target(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")


def _panel(axes: Axes, title: str, ylabel: str, series: dict[str, Sequence[tuple[float, float]]],
           empty: str) -> None:
    """One chart: title, grid, epoch and value axis names, a legend; a note when there is no data."""
    axes.set_title(title, fontsize=FONT_SIZE + 1)
    axes.set_xlabel("epoch", fontsize=FONT_SIZE)
    axes.set_ylabel(ylabel, fontsize=FONT_SIZE)
    axes.tick_params(labelsize=FONT_SIZE)
    axes.grid(True, color="0.88")
    drawn = False
    for name, points in series.items():
        points = [p for p in points if math.isfinite(p[1])]
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4, label=name)
            drawn = True
    if drawn:
        axes.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
        axes.legend(fontsize=FONT_SIZE)
    else:
        axes.text(0.5, 0.5, empty, transform=axes.transAxes, ha="center", va="center", color="0.45",
                  fontsize=FONT_SIZE)


def history_figure(history: list[dict]) -> Figure:
    """Three panels (training loss, validation pixel accuracy, validation mIoU) against epoch."""
    figure = new_figure(1260, 400)

    def pick(key: str) -> list[tuple[float, float]]:
        return [(h["epoch"], float(h[key])) for h in history if h.get(key) is not None]

    panels = [
        ("training loss", "loss", {"train": pick("train_loss")}, "no data yet"),
        ("validation pixel accuracy", "accuracy", {"val": pick("pixel_accuracy")},
         "no validation (train with --validate)"),
        ("validation mIoU", "mIoU", {"val": pick("mIoU")}, "no validation (train with --validate)"),
    ]
    for axes, (title, ylabel, series, empty) in zip(figure.subplots(1, 3), panels):
        _panel(axes, title, ylabel, series, empty)
    figure.tight_layout()
    return figure


def plot_history(history: list[dict], path: str | os.PathLike) -> None:
    """Write the three-panel curves PNG for ``history`` (one dict per epoch)."""
    save_png(history_figure(history), path)
