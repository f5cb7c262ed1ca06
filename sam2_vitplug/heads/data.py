"""Image / class-mask pairs for semantic segmentation: discovery, validation, transforms.

Masks are single-channel PNGs of class ids (mode ``L`` or ``P``), paired with images by file
stem; 255 means "ignore".
Everything that can be wrong with the inputs is checked by :func:`validate_pairs` before
any training starts, naming the offending file.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..images import IMAGE_EXTS as IMAGE_SUFFIXES
from ..images import load_rgb  # noqa: F401 - heads read images the way every command does
from .metrics import IGNORE_INDEX

logger = logging.getLogger(__name__)

MASK_MODES = ("L", "P", "I;16", "I")


def expand_paths(spec: str | os.PathLike | Sequence[str | os.PathLike], what: str,
                 suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Sorted files named by a glob pattern, a folder, a file, or a list of those."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise FileNotFoundError(f"no {what} given; pass a glob pattern such as 'data/{what}/*.png' or a folder")
    out: list[Path] = []
    for item in specs:
        text = os.fspath(item)
        if os.path.isdir(text):
            found = sorted(p for p in Path(text).iterdir() if p.suffix.lower() in suffixes)
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if os.path.isfile(p))
        elif os.path.isfile(text):
            found = [Path(text)]
        else:
            raise FileNotFoundError(f"{what} path '{text}' does not exist; pass an existing file, folder or glob")
        if not found:
            raise FileNotFoundError(f"{what} pattern '{text}' matched no files; check the path and quote the glob "
                                    "so the shell does not expand it")
        out.extend(found)
    return out


def _by_stem(paths: Sequence[Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in paths:
        if path.stem in out:
            raise ValueError(f"{what}s '{out[path.stem]}' and '{path}' share the name '{path.stem}', so masks cannot be "
                             "paired with images by name; rename or remove one")
        out[path.stem] = path
    return out


def pair_paths(image_spec, mask_spec) -> list[tuple[Path, Path]]:
    """Pair each image with the mask of the same file stem (``a.jpg`` + ``a.png``), in sorted
    image order; an image without a mask or a mask without an image is an error naming it
    (sorted order alone would mislabel every pair after one renamed file)."""
    images = expand_paths(image_spec, "images")
    masks = expand_paths(mask_spec, "masks", suffixes=(".png",))
    image_by, mask_by = _by_stem(images, "image"), _by_stem(masks, "mask")
    lonely_images = [p for s, p in image_by.items() if s not in mask_by]
    lonely_masks = [p for s, p in mask_by.items() if s not in image_by]
    if lonely_images or lonely_masks:
        counts = (f"{len(images)} images and {len(masks)} masks" if len(images) == len(masks)
                  else f"{len(images)} images but {len(masks)} masks")
        problems = []
        if lonely_images:
            more = f" (and {len(lonely_images) - 1} more images)" if len(lonely_images) > 1 else ""
            problems.append(f"image '{lonely_images[0]}' has no mask '{lonely_images[0].stem}.png'{more}")
        if lonely_masks:
            more = f" (and {len(lonely_masks) - 1} more masks)" if len(lonely_masks) > 1 else ""
            problems.append(f"mask '{lonely_masks[0]}' has no image '{lonely_masks[0].stem}.*'{more}")
        raise ValueError(f"{counts}; masks pair with images by file name and {'; '.join(problems)}: every image "
                         "needs one mask of the same name")
    return [(image, mask_by[image.stem]) for image in images]


def _decode_error(path: Path, what: str, err: BaseException) -> ValueError:
    reason = (str(err).splitlines() or [type(err).__name__])[0]
    return ValueError(f"{what} '{path}' cannot be decoded ({reason}): it is truncated or not an image; re-export "
                      "or remove it (and its pair)")


def validate_pairs(pairs: Sequence[tuple[Path, Path]], num_classes: int, *, ignore_index: int = IGNORE_INDEX,
                   progress: bool = False) -> np.ndarray:
    """Check every pair; return the pixel count per class (``(num_classes,)`` int64).

    Raises ValueError naming the file when a mask is not single-channel, its size differs
    from its image, or it holds a class id ``>= num_classes`` that is not ``ignore_index``.
    """
    from tqdm import tqdm

    if num_classes < 1 or num_classes > 255:
        raise ValueError(f"num_classes must be in 1..255 (255 is the ignore label), got {num_classes}")
    counts = np.zeros(num_classes, np.int64)
    for image_path, mask_path in tqdm(pairs, desc="checking masks", disable=not progress):
        try:  # decode fully: a truncated JPEG opens fine and fails only when its pixels are read
            with Image.open(image_path) as image:
                image.load()
                image_size = image.size
        except (OSError, SyntaxError, ValueError) as err:
            raise _decode_error(image_path, "image", err) from err
        try:
            with Image.open(mask_path) as mask_img:
                mask_img.load()
                mode, mask_size = mask_img.mode, mask_img.size
                values = np.asarray(mask_img).astype(np.int64)
        except (OSError, SyntaxError, ValueError) as err:
            raise _decode_error(mask_path, "mask", err) from err
        if mode not in MASK_MODES:
            raise ValueError(f"mask '{mask_path}' has mode {mode}; masks must be single-channel PNGs "
                             f"of class ids (mode L or P)")
        if mask_size != image_size:
            raise ValueError(f"mask '{mask_path}' is {mask_size[0]}x{mask_size[1]} but its image "
                             f"'{image_path}' is {image_size[0]}x{image_size[1]}; they must be the same size")
        found = np.bincount(values.ravel(), minlength=max(num_classes, ignore_index + 1))
        bad = [int(v) for v in np.nonzero(found)[0] if v >= num_classes and v != ignore_index]
        if bad:
            raise ValueError(f"mask '{mask_path}' holds class id {bad[0]} but --num-classes is {num_classes} "
                             f"(valid ids 0..{num_classes - 1}, and {ignore_index} = ignore)")
        counts += found[:num_classes]
    return counts


def load_mask(path: str | os.PathLike) -> np.ndarray:
    with Image.open(path) as mask:
        return np.asarray(mask).astype(np.int64)


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float, normalised."""
        x = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std


def resize_pair(rgb: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize to ``(height, width)``: bilinear for the image, nearest for the mask."""
    h, w = size
    image = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    if mask is None:
        return image, None
    return image, np.asarray(Image.fromarray(mask.astype(np.int32)).resize((w, h), Image.NEAREST)).astype(np.int64)


class SegmentationDataset(Dataset):
    """Pairs resized to ``image_size x image_size`` (stretch; the aspect is not kept in
    training), with optional augmentation (random scale 0.5-2.0, crop padded with the ignore
    label, horizontal flip). Augmentation draws from a generator seeded by
    ``(seed, epoch, index)``, so a run is reproducible across workers and resumes."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], image_size: int, normalize: Normalize, *,
                 augment: bool = False, seed: int = 0) -> None:
        self.pairs = list(pairs)
        self.image_size = int(image_size)
        self.normalize = normalize
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image_path, mask_path = self.pairs[index]
        rgb, mask = load_rgb(image_path), load_mask(mask_path)
        size = self.image_size
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            scale = float(rng.uniform(0.5, 2.0))
            side = max(16, int(round(size * scale)))
            rgb, mask = resize_pair(rgb, mask, (side, side))
            pad = max(0, size - side)
            if pad:
                rgb = np.pad(rgb, ((0, pad), (0, pad), (0, 0)))
                mask = np.pad(mask, ((0, pad), (0, pad)), constant_values=IGNORE_INDEX)
            top = int(rng.integers(0, rgb.shape[0] - size + 1))
            left = int(rng.integers(0, rgb.shape[1] - size + 1))
            rgb, mask = rgb[top:top + size, left:left + size], mask[top:top + size, left:left + size]
            if rng.random() < 0.5:
                rgb, mask = rgb[:, ::-1], mask[:, ::-1]
        else:
            rgb, mask = resize_pair(rgb, mask, (size, size))
        return self.normalize(rgb), torch.from_numpy(np.ascontiguousarray(mask)), index


def write_class_masks_from_coco(annotations_json: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Paint COCO instance annotations as class-id PNGs (category id per pixel, 0 = none).

    Used to turn the synthetic shapes dataset (or any COCO set whose category ids are
    below 255) into semantic masks; later annotations overwrite earlier ones. One PNG per
    image, named like the image with ``.png``. Returns the written paths in image order.
    """
    import json

    from pycocotools import mask as mask_utils

    coco = json.loads(Path(annotations_json).read_text())
    if any(c["id"] >= IGNORE_INDEX for c in coco["categories"]):
        raise ValueError(f"'{annotations_json}' has category ids >= {IGNORE_INDEX}; remap them first")
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for image in coco["images"]:
        canvas = np.zeros((image["height"], image["width"]), np.uint8)
        for ann in by_image.get(image["id"], []):
            seg = ann["segmentation"]
            if isinstance(seg, list):
                seg = mask_utils.merge(mask_utils.frPyObjects(seg, image["height"], image["width"]))
            canvas[mask_utils.decode(seg).astype(bool)] = ann["category_id"]
        path = out / (Path(image["file_name"]).stem + ".png")
        Image.fromarray(canvas, mode="L").save(path)
        written.append(path)
    return written
