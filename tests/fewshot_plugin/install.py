"""Publish the test-only ``colorhist`` encoder family through the entry-point group at test time.

A dist-info folder declaring ``colorhist = fewshot_colorhist:COLORHIST`` in
``sam2_vitplug.encoders`` is written under ``root``; putting ``root`` and this folder on
``sys.path`` (or ``PYTHONPATH`` for subprocesses) makes ``importlib.metadata`` see it.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent


def write_dist_info(root: Path) -> list[str]:
    """Write the dist-info under ``root``; returns the paths to prepend to ``sys.path``."""
    info = root / "fewshot_colorhist-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fewshot-colorhist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sam2_vitplug.encoders]\ncolorhist = fewshot_colorhist:COLORHIST\n")
    return [str(root), str(PLUGIN_DIR)]


@contextlib.contextmanager
def installed(root: Path):
    """Within the block, ``colorhist`` is an installed encoder type of this process."""
    from sam2_vitplug.encoders import refresh

    paths = write_dist_info(root)
    sys.path[:0] = paths
    refresh()
    try:
        yield paths
    finally:
        for p in paths:
            sys.path.remove(p)
        sys.modules.pop("fewshot_colorhist", None)
        refresh()
