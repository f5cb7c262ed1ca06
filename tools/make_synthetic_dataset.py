#!/usr/bin/env python
"""Write a reproducible synthetic instance-segmentation dataset of coloured, textured shapes.

Why: no real data set can be downloaded here, and tests, training checks and few-shot runs
need images with exact instance masks. Each class has its own shape, base colour and
texture, so class identity is learnable (and visible to a colour-histogram encoder), while
colour jitter, sizes, rotations, occlusions and a textured background keep it non-trivial.

Layout under ``--out`` (each split is ``train`` or ``val``)::

    dataset_info.json                      # arguments, classes, counts
    {split}/images/{id:06d}.jpg            # COCO images
    {split}/annotations.json               # COCO instances: RLE masks, xywh boxes
    {split}/png/JPEGImages/{id:06d}/00000.jpg   # upstream PNGRawDataset layout: one-frame videos
    {split}/png/Annotations/{id:06d}/00000.png  # palette PNG, pixel = object id, 0 = background
    {split}/video/JPEGImages/vid{n:04d}/{t:05d}.jpg   # optional moving-shape videos (--videos)
    {split}/video/Annotations/vid{n:04d}/{t:05d}.png
    {split}/sa1b/sa_{id}.jpg + sa_{id}.json     # optional SA-1B layout (--sa1b; upstream SA1BRawDataset)

Same arguments and seed -> byte-identical files. The dataset is written to a temporary
folder next to ``--out`` and renamed at the end: an interrupted run leaves nothing behind.

    python tools/make_synthetic_dataset.py --out data/shapes --train 200 --val 50 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = (
    # name, base RGB, texture
    ("circle", (220, 50, 50), "plain"),
    ("square", (50, 190, 60), "stripes"),
    ("triangle", (50, 80, 220), "plain"),
    ("star", (230, 200, 40), "dots"),
)
JPEG_QUALITY = 95
MIN_VISIBLE_AREA = 64  # pixels; heavily occluded instances are dropped


@dataclass(frozen=True)
class DatasetSpec:
    train: int = 200
    val: int = 50
    image_size: int = 256
    seed: int = 0
    min_instances: int = 2
    max_instances: int = 5
    videos: int = 0
    frames: int = 8


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4))
               for k in range(4)]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif kind == "star":
        pts = [((1.0 if k % 2 == 0 else 0.45) * math.cos(angle + k * math.pi / 5),
                (1.0 if k % 2 == 0 else 0.45) * math.sin(angle + k * math.pi / 5)) for k in range(10)]
    else:
        raise ValueError(kind)
    return [(cx + r * x, cy + r * y) for x, y in pts]


def _shape_mask(kind: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=255)
    return np.asarray(canvas) > 127


def _texture(kind: str, rgb: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.broadcast_to(rgb, (size, size, 3)).astype(np.float32).copy()
    if kind == "stripes":
        period = rng.uniform(6, 12)
        img *= (0.75 + 0.25 * (np.sin((xx + yy) * 2 * math.pi / period) > 0))[..., None]
    elif kind == "dots":
        period = rng.uniform(7, 11)
        img *= (0.7 + 0.3 * ((np.sin(xx * 2 * math.pi / period) * np.sin(yy * 2 * math.pi / period)) > 0.3))[..., None]
    return img


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(70, 150, 3)
    grad = rng.uniform(-40, 40, 3)
    img = base + grad * (xx[..., None] * rng.uniform(0, 1) + yy[..., None] * rng.uniform(0, 1))
    return img + rng.normal(0, 10, (size, size, 3))


def _instance(rng: np.random.Generator, size: int) -> dict:
    cls = int(rng.integers(len(CLASSES)))
    r = rng.uniform(0.07, 0.2) * size
    return {
        "cls": cls,
        "r": r,
        "cx": rng.uniform(r * 0.6, size - r * 0.6),
        "cy": rng.uniform(r * 0.6, size - r * 0.6),
        "angle": rng.uniform(0, 2 * math.pi),
        "rgb": np.clip(np.array(CLASSES[cls][1]) + rng.normal(0, 18, 3), 0, 255),
        "vx": rng.uniform(-0.03, 0.03) * size,
        "vy": rng.uniform(-0.03, 0.03) * size,
    }


def render(instances: list[dict], size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Paint instances back to front. Returns the RGB image, an id map (0 = background,
    i + 1 = instances[i]) and the ids still visible enough to keep."""
    img = _background(size, rng)
    ids = np.zeros((size, size), np.uint8)
    for i, inst in enumerate(instances):
        name, _, texture = CLASSES[inst["cls"]]
        mask = _shape_mask(name, size, inst["cx"], inst["cy"], inst["r"], inst["angle"])
        img[mask] = _texture(texture, inst["rgb"], size, rng)[mask] + rng.normal(0, 6, (int(mask.sum()), 3))
        ids[mask] = i + 1
    keep = [i + 1 for i in range(len(instances)) if (ids == i + 1).sum() >= MIN_VISIBLE_AREA]
    ids[~np.isin(ids, keep)] = 0
    return np.clip(img, 0, 255).astype(np.uint8), ids, keep


def _save_palette(ids: np.ndarray, path: Path) -> None:
    png = Image.frombytes("P", (ids.shape[1], ids.shape[0]), np.ascontiguousarray(ids).tobytes())
    palette = [0, 0, 0] + [int(c) for k in range(1, 256) for c in ((k * 97) % 256, (k * 57) % 256, (k * 31) % 256)]
    png.putpalette(palette)
    path.parent.mkdir(parents=True, exist_ok=True)
    png.save(path)


def _save_jpg(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=JPEG_QUALITY)


def _coco_annotation(mask: np.ndarray, ann_id: int, image_id: int, category_id: int) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    x, y, w, h = mask_utils.toBbox(rle).tolist()
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": rle,
            "area": float(mask_utils.area(rle)), "bbox": [x, y, w, h], "iscrowd": 0}


def _write_split(root: Path, split: str, count: int, spec: DatasetSpec, seed: int, progress: bool) -> dict:
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in tqdm(range(1, count + 1), desc=f"{split} images", disable=not progress):
        n = int(rng.integers(spec.min_instances, spec.max_instances + 1))
        instances = [_instance(rng, spec.image_size) for _ in range(n)]
        img, ids, keep = render(instances, spec.image_size, rng)
        name = f"{image_id:06d}"
        _save_jpg(img, root / split / "images" / f"{name}.jpg")
        _save_jpg(img, root / split / "png" / "JPEGImages" / name / "00000.jpg")
        # palette ids renumbered 1..K over kept instances
        renumbered = np.zeros_like(ids)
        for new_id, old_id in enumerate(keep, start=1):
            renumbered[ids == old_id] = new_id
            annotations.append(_coco_annotation(ids == old_id, len(annotations) + 1, image_id,
                                                instances[old_id - 1]["cls"] + 1))
        _save_palette(renumbered, root / split / "png" / "Annotations" / name / "00000.png")
        images.append({"id": image_id, "file_name": f"{name}.jpg", "width": spec.image_size, "height": spec.image_size})
    coco = {
        "info": {"description": f"sam2-vitplug synthetic shapes, {split}", "seed": seed},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c[0], "supercategory": "shape"} for i, c in enumerate(CLASSES)],
    }
    (root / split / "annotations.json").write_text(json.dumps(coco))
    for v in tqdm(range(spec.videos), desc=f"{split} videos", disable=not progress or not spec.videos):
        n = int(rng.integers(spec.min_instances, spec.max_instances + 1))
        instances = [_instance(rng, spec.image_size) for _ in range(n)]
        for t in range(spec.frames):
            img, ids, keep = render(instances, spec.image_size, rng)
            ids[~np.isin(ids, keep)] = 0  # object ids stay stable over time (i + 1)
            _save_jpg(img, root / split / "video" / "JPEGImages" / f"vid{v:04d}" / f"{t:05d}.jpg")
            _save_palette(ids, root / split / "video" / "Annotations" / f"vid{v:04d}" / f"{t:05d}.png")
            for inst in instances:  # move, bouncing off the borders
                for pos, vel in (("cx", "vx"), ("cy", "vy")):
                    inst[pos] += inst[vel]
                    if not inst["r"] * 0.6 <= inst[pos] <= spec.image_size - inst["r"] * 0.6:
                        inst[vel] = -inst[vel]
                        inst[pos] += 2 * inst[vel]
                inst["angle"] += 0.1
    return {"images": len(images), "instances": len(annotations), "videos": spec.videos}


def make_dataset(out: str | os.PathLike, spec: DatasetSpec = DatasetSpec(), *, overwrite: bool = False,
                 progress: bool = False) -> Path:
    """Write the dataset to ``out`` (atomically) and return its path."""
    out = Path(out)
    if spec.image_size < 64 or spec.image_size % 16:
        raise ValueError(f"image_size must be a multiple of 16 and >= 64, got {spec.image_size}")
    if not 1 <= spec.min_instances <= spec.max_instances:
        raise ValueError(f"need 1 <= min_instances <= max_instances, got {spec.min_instances}, {spec.max_instances}")
    if spec.train < 0 or spec.val < 0 or spec.videos < 0 or spec.frames < 1:
        raise ValueError(f"counts must be >= 0 (frames >= 1), got {asdict(spec)}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"'{out}' exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        counts = {}
        for offset, (split, count) in enumerate((("train", spec.train), ("val", spec.val))):
            counts[split] = _write_split(tmp, split, count, spec, spec.seed * 1000 + offset, progress)
        info = {"spec": asdict(spec), "classes": [c[0] for c in CLASSES], "counts": counts}
        (tmp / "dataset_info.json").write_text(json.dumps(info, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def add_sa1b_layout(out: str | os.PathLike) -> Path:
    """Add ``{split}/sa1b/sa_{id}.jpg`` + ``sa_{id}.json`` (SA-1B style: ``{"image": ...,
    "annotations": [{"segmentation": RLE, "area", "bbox", ...}]}``) to a dataset written by
    :func:`make_dataset`, from its COCO files. Each split's folder appears atomically."""
    out = Path(out)
    for split in ("train", "val"):
        coco_path = out / split / "annotations.json"
        if not coco_path.is_file():
            raise FileNotFoundError(f"'{coco_path}' is missing; write the dataset with make_dataset first")
        coco = json.loads(coco_path.read_text())
        by_image: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        tmp = Path(tempfile.mkdtemp(prefix=".sa1b.tmp-", dir=out / split))
        try:
            for image in coco["images"]:
                shutil.copyfile(out / split / "images" / image["file_name"], tmp / f"sa_{image['id']}.jpg")
                record = {"image": {"image_id": image["id"], "width": image["width"], "height": image["height"],
                                    "file_name": f"sa_{image['id']}.jpg"},
                          "annotations": [{k: a[k] for k in ("id", "segmentation", "area", "bbox")}
                                          for a in by_image.get(image["id"], [])]}
                (tmp / f"sa_{image['id']}.json").write_text(json.dumps(record))
            if (out / split / "sa1b").exists():
                shutil.rmtree(out / split / "sa1b")
            os.replace(tmp, out / split / "sa1b")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    for name, default in asdict(DatasetSpec()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--sa1b", action="store_true", help="also write the SA-1B layout ({split}/sa1b/)")
    args = parser.parse_args(argv)
    spec = DatasetSpec(**{k: getattr(args, k) for k in asdict(DatasetSpec())})
    try:
        out = make_dataset(args.out, spec, overwrite=args.overwrite, progress=True)
        if args.sa1b:
            add_sa1b_layout(out)
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    info = json.loads((out / "dataset_info.json").read_text())
    print(f"wrote {out}: " + ", ".join(f"{s}: {c['images']} images, {c['instances']} instances, {c['videos']} videos"
                                        for s, c in info["counts"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
