"""Reading images and COCO files, writing JSON atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB; grayscale, palette and RGBA are converted
    (alpha is dropped, not composited: the matcher sees the stored colours)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image '{path}' does not exist; check --images and the file_name in the COCO json")
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """A COCO instances file with ``images``, ``annotations`` and ``categories`` lists."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file '{path}' does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"'{path}' is not valid JSON ({err})") from err
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"'{path}' is not a COCO instances file: no list under {missing}")
    return data


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file next to ``path`` and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=indent).encode())
