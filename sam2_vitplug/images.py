"""Reading image files, the same way for every command: RGB uint8 arrays, folders expanded to
their images, and a full decode up front so a truncated file is named before any model runs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB; grayscale, palette and RGBA are converted
    (alpha is dropped, not composited: the matcher sees the stored colours)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image '{path}' does not exist; check the path (few-shot: --images and the file_name in the COCO json)")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as err:  # PIL: truncated (OSError), unidentified, corrupt chunks
        raise ValueError(f"image '{path}' cannot be decoded ({str(err).splitlines()[0] if str(err) else type(err).__name__}): "
                         "it is truncated or not an image; re-export it or remove it") from err


def collect_images(paths: list[str]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted); raises if none is found."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
            if not images:
                raise FileNotFoundError(f"folder '{path}' holds no images ({', '.join(IMAGE_EXTS)})")
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"image '{path}' does not exist; pass image files or folders of images")
    return found


def decoded_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` after a full decode, so a truncated file is named up front."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.size
    except (OSError, SyntaxError, ValueError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ValueError(f"image '{path}' cannot be decoded ({reason}): it is truncated or not an image; re-export it "
                         "or remove it") from err
