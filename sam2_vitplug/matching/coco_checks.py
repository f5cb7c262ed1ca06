"""Up-front checks of COCO inputs, so a malformed file stops in one line naming the entry.

Everything that reads a COCO json (``fewshot memory --refs``, ``run --ann``, ``eval --ann``)
goes through :func:`check_coco` before any model is built: a wrong file then never ends in a
traceback deep in pycocotools, nor in silently wrong data (garbage segmentation treated as
box-only, duplicate image ids, an image without its size). Results files for ``fewshot eval``
are checked against the ground truth by :func:`check_results`.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

REQUIRED_IMAGE_KEYS = ("id", "file_name", "width", "height")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return _is_number(value) and float(value).is_integer()


def check_coco(data: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``data`` if it is a usable COCO instances dict, else ``ValueError`` naming the first bad entry."""
    where = f"'{path}'"
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not a COCO instances file: its top level is a {type(data).__name__}, "
                         "expected an object with 'images', 'annotations' and 'categories' lists")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"{where} is not a COCO instances file: no list under {missing}")
    seen: set[int] = set()
    sizes: dict[int, tuple[int, int]] = {}
    for n, image in enumerate(data["images"]):
        if not isinstance(image, dict):
            raise ValueError(f"{where}: images[{n}] is a {type(image).__name__}, expected an object")
        absent = [k for k in REQUIRED_IMAGE_KEYS if k not in image]
        if absent:
            raise ValueError(f"{where}: image entry {image.get('id', f'#{n}')!r} has no {', '.join(absent)}; "
                             f"every image needs {', '.join(REQUIRED_IMAGE_KEYS)}")
        if not _is_int(image["id"]):
            raise ValueError(f"{where}: images[{n}] has id {image['id']!r}; image ids must be integers")
        image_id = int(image["id"])
        for key in ("width", "height"):
            if not _is_int(image[key]) or image[key] <= 0:
                raise ValueError(f"{where}: image {image_id} has {key} {image[key]!r}; expected a positive integer")
        if image_id in seen:
            raise ValueError(f"{where}: image id {image_id} appears more than once in 'images'; image ids must "
                             "be unique")
        seen.add(image_id)
        sizes[image_id] = (int(image["height"]), int(image["width"]))
    cat_ids: set[int] = set()
    for n, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise ValueError(f"{where}: categories[{n}] has no integer 'id'")
        if int(cat["id"]) in cat_ids:
            raise ValueError(f"{where}: category id {int(cat['id'])} appears more than once in 'categories'")
        cat_ids.add(int(cat["id"]))
    for n, ann in enumerate(data["annotations"]):
        _check_annotation(ann, n, sizes, where)
    return data


def _check_annotation(ann: Any, n: int, sizes: dict[int, tuple[int, int]], where: str) -> None:
    if not isinstance(ann, dict):
        raise ValueError(f"{where}: annotations[{n}] is a {type(ann).__name__}, expected an object")
    for key in ("id", "image_id", "category_id"):
        if not _is_int(ann.get(key)):
            raise ValueError(f"{where}: annotation {ann.get('id', f'#{n}')!r} has {key} {ann.get(key)!r}; "
                             "expected an integer")
    name = f"{where}: annotation {int(ann['id'])}"
    bbox = ann.get("bbox")
    if bbox is not None and not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)
                                 and bbox[2] >= 0 and bbox[3] >= 0):
        raise ValueError(f"{name} has bbox {bbox!r}; expected [x, y, width, height] with finite numbers "
                         "and width, height >= 0")
    seg = ann.get("segmentation")
    if seg is None or (isinstance(seg, list) and not seg):
        return  # box-only: its mask comes from SAM2 box prompts
    if isinstance(seg, list):
        if not all(isinstance(p, list) and all(_is_number(v) for v in p) for p in seg):
            raise ValueError(f"{name} has a segmentation that is neither a list of polygons "
                             "([[x1, y1, x2, y2, ...], ...]) nor an RLE object; fix it or drop the key (box-only)")
        return
    if not isinstance(seg, dict):
        raise ValueError(f"{name} has a segmentation of type {type(seg).__name__}; expected a list of polygons "
                         "or an RLE object {'size': [h, w], 'counts': ...}")
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        raise ValueError(f"{name} has an RLE segmentation with size {size!r}; expected [height, width]")
    image_size = sizes.get(int(ann["image_id"]))
    if image_size is not None and tuple(int(v) for v in size) != image_size:
        raise ValueError(f"{name} has an RLE of size {size} but its image {int(ann['image_id'])} is "
                         f"{image_size[0]}x{image_size[1]} (height x width)")
    if isinstance(counts, list):
        if not all(_is_int(v) and v >= 0 for v in counts) or sum(counts) != size[0] * size[1]:
            raise ValueError(f"{name} has an uncompressed RLE whose counts do not add up to "
                             f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels")
    elif isinstance(counts, str):
        _check_compressed_rle(counts, size, name)
    else:
        raise ValueError(f"{name} has an RLE segmentation with counts of type {type(counts).__name__}; "
                         "expected a string (compressed) or a list of integers")


def _check_compressed_rle(counts: str, size: list, name: str) -> None:
    """A compressed RLE string must decode to exactly ``h * w`` pixels (LEB128-like, as pycocotools)."""
    total, p, k = 0, 0, 0
    values = []
    try:
        raw = counts.encode("ascii")
    except UnicodeEncodeError:
        raw = b"\x00"
    while p < len(raw):
        x, k, more = 0, 0, True
        while more:
            if p >= len(raw):
                raise ValueError(f"{name} has a compressed RLE string that ends in the middle of a run")
            c = raw[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"{name} has a compressed RLE string with a character outside the RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(values) > 2:
            x += values[-2]
        values.append(x)
        if x < 0:
            raise ValueError(f"{name} has a compressed RLE string with a negative run length")
        total += x
    if total != int(size[0]) * int(size[1]):
        raise ValueError(f"{name} has a compressed RLE whose runs cover {total} pixels, not its size "
                         f"{size[0]}x{size[1]} = {int(size[0]) * int(size[1])}")


def missing_categories(data: dict[str, Any]) -> Counter:
    """Annotations per category id that ``categories`` does not list (they cannot be used)."""
    known = {int(c["id"]) for c in data["categories"]}
    return Counter(int(a["category_id"]) for a in data["annotations"] if int(a["category_id"]) not in known)


def check_image_sizes(images: Iterable[dict[str, Any]], root: str | os.PathLike, *, skip_missing: bool = False) -> None:
    """``ValueError`` naming the first image whose file size disagrees with its JSON width/height
    (border and size rules, masks and boxes would all be computed on the wrong frame).
    ``skip_missing`` leaves absent files to the caller's own (listing) check."""
    from PIL import Image

    from .io import load_rgb

    for image in images:
        path = Path(root) / image["file_name"]
        if skip_missing and not path.is_file():
            continue
        try:
            with Image.open(path) as fh:
                width, height = fh.size
        except (OSError, SyntaxError, ValueError):
            load_rgb(path)  # names the file: missing, or not an image
            raise
        if (width, height) != (int(image["width"]), int(image["height"])):
            raise ValueError(f"image '{path}' is {width}x{height} but the COCO json says "
                             f"{int(image['width'])}x{int(image['height'])} (width x height) for image id "
                             f"{int(image['id'])}; fix 'width'/'height' in the json or use the original file")


def check_results(results: Any, coco: dict[str, Any], path: str | os.PathLike) -> tuple[str, ...]:
    """The IoU types ``results`` can be evaluated on (``bbox``, and ``segm`` when every result has a
    mask), or ``ValueError`` naming the first result that does not fit the ground truth."""
    where = f"'{path}'"
    if not isinstance(results, list):
        raise ValueError(f"{where} must hold a list of COCO results, got a {type(results).__name__}")
    image_ids = {int(im["id"]) for im in coco["images"]}
    cat_ids = {int(c["id"]) for c in coco["categories"]}
    with_mask = 0
    for n, r in enumerate(results):
        if not isinstance(r, dict):
            raise ValueError(f"{where}: result #{n} is a {type(r).__name__}, expected an object")
        for key in ("image_id", "category_id", "score"):
            if not _is_number(r.get(key)):
                raise ValueError(f"{where}: result #{n} has {key} {r.get(key)!r}; expected a number")
        if int(r["image_id"]) not in image_ids:
            raise ValueError(f"{where}: result #{n} is for image id {int(r['image_id'])}, which the ground truth "
                             "does not list; evaluate against the --ann the results were made for")
        if int(r["category_id"]) not in cat_ids:
            raise ValueError(f"{where}: result #{n} has category id {int(r['category_id'])}, which the ground "
                             f"truth's categories {sorted(cat_ids)} do not list")
        bbox = r.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise ValueError(f"{where}: result #{n} has bbox {bbox!r}; expected [x, y, width, height]")
        with_mask += isinstance(r.get("segmentation"), (dict, list)) and bool(r.get("segmentation"))
    if with_mask not in (0, len(results)):
        raise ValueError(f"{where}: {len(results) - with_mask} of {len(results)} results have no segmentation; "
                         "give every result a mask, or none (bbox-only evaluation)")
    return ("bbox", "segm") if with_mask or not results else ("bbox",)
