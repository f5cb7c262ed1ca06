"""File names from the page, confined to one folder.

Why: the page names images by file name; a name like ``../x`` or ``/etc/passwd`` or a symlink
out of the folder must never reach the disk. Only flat names are accepted because the few-shot
runner reads a folder non-recursively (``images_from_folder``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..images import IMAGE_EXTS  # the one list of image suffixes


class BadRequest(ValueError):
    """Bad input from the page: answered with HTTP 400 and this message, never a traceback."""


def check_name(name: object) -> str:
    """``name`` if it is a plain image file name (no folder part, no ``..``), else BadRequest."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise BadRequest(f"an image file name is needed, got {name!r}")
    if "\x00" in name or "/" in name or "\\" in name or os.path.isabs(name) or ".." in name.split(os.sep):
        raise BadRequest(f"'{name}' is not a plain file name: paths, '..' and absolute names are refused")
    if name.startswith("."):
        raise BadRequest(f"'{name}': hidden files are refused")
    if Path(name).suffix.lower() not in IMAGE_EXTS:
        raise BadRequest(f"'{name}' is not an image file name (allowed: {', '.join(IMAGE_EXTS)})")
    return name


def inside(root: Path, name: object, *, must_exist: bool = True) -> Path:
    """``root / name`` after :func:`check_name`, refused if it (or a symlink) resolves outside ``root``."""
    path = root / check_name(name)
    real_root = root.resolve()
    if path.is_symlink() or path.exists():
        target = path.resolve()
        if target.parent != real_root and real_root not in target.parents:
            raise BadRequest(f"'{name}' points outside the image folder; refused")
    if must_exist and not path.is_file():
        raise BadRequest(f"no image '{name}' in the image folder")
    return path


def list_images(root: Path) -> list[str]:
    """The image file names of ``root`` that stay inside it, sorted (the runner's id order)."""
    names = []
    for p in sorted(root.iterdir(), key=lambda p: p.name):
        if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
            try:
                inside(root, p.name)
            except BadRequest:
                continue
            names.append(p.name)
    return names
