"""Reading COCO files (images: :mod:`sam2_vitplug.images`); writing files atomically (temporary name, then rename) with
the permissions a plain ``open()`` would give (the umask's), not ``mkstemp``'s private 0600."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_target, atomic_write_bytes, file_mode  # noqa: F401 - the writers live there
from ..images import load_rgb  # noqa: F401 - image reading lives there


def read_json(path: str | os.PathLike, what: str) -> Any:
    """A JSON file's content; a missing file or bad JSON is one line naming ``what`` it is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} '{path}' is not valid JSON ({err})") from err


def load_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """A COCO instances file with ``images``, ``annotations`` and ``categories`` lists, checked
    up front (:func:`~sam2_vitplug.matching.coco_checks.check_coco`)."""
    path = Path(path)
    data = read_json(path, "COCO annotation file")
    from .coco_checks import check_coco

    return check_coco(data, path)  # top level, required fields, unique ids, segmentation and bbox forms


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=indent).encode())
