"""Binary masks to and from what the page and COCO need: RLE, boxes, a PNG the page tints, and
an anchor point inside the mask (where the page draws the label and a click selects it)."""

from __future__ import annotations

import base64
import io

import numpy as np


def to_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a ``(H, W)`` bool mask, ``counts`` as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def from_rle(rle: dict) -> np.ndarray:
    """``(H, W)`` bool mask of a COCO RLE (compressed counts as str or bytes)."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    fixed = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    if isinstance(counts, list):  # uncompressed RLE
        fixed = mask_utils.frPyObjects(fixed, *fixed["size"])
    return mask_utils.decode(fixed).astype(bool)


def rle_stats(rle: dict) -> tuple[list[float], float]:
    """(COCO xywh box, area) of an RLE, by pycocotools (what ``fewshot memory`` reads back)."""
    from pycocotools import mask as mask_utils

    fixed = {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}
    return [float(v) for v in mask_utils.toBbox(fixed)], float(mask_utils.area(fixed))


def png_data_url(mask: np.ndarray) -> str:
    """A white PNG whose alpha is the mask: the page colours it per class (canvas ``source-in``)."""
    from PIL import Image

    alpha = mask.astype(np.uint8) * 255
    img = Image.fromarray(np.stack([np.full_like(alpha, 255), alpha], axis=-1), mode="LA")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def anchor(mask: np.ndarray) -> list[int] | None:
    """The most interior pixel ``[x, y]`` of the mask (largest distance to its border), or None if empty."""
    if not mask.any():
        return None
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return [int(x), int(y)]
