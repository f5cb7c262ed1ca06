"""Inference at any image size: resize (keep aspect) + pad to the stride multiple, or a
sliding window; coloured overlays with a legend; images, folders and videos (OpenCV).

Compute dtype (``dtype="fp32"|"bf16"|"fp16"``, validated by :func:`precision.check_dtype`):
the frozen ViT and the head run under autocast, the ViT's ``nn.Linear`` weights pre-cast once
and cached on the ViT (:func:`precision.lowp_weights`: bit-identical to autocast's own
per-forward casts, without them). What stays fp32: the head outputs are cast to fp32 before the
class scores (Mask2Former's softmax over classes and sigmoid over masks), the upsampling to the image, the
sliding-window average, the argmax and the confusion matrix. ``fp32`` is the exact path, the
code as it was without any dtype (docs/precision.md).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..atomic import atomic_target, file_mode
from ..precision import DTYPES, check_dtype, lowp_weights, parse_dtype
from .data import IMAGE_SUFFIXES, Normalize
from .model import SegModel

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
PAD_MULTIPLE = 16  # the trunk needs H, W multiples of 16 (docs/architecture.md section 2)
INFERENCE_MODES = ("resize", "slide")


def palette(num_classes: int) -> np.ndarray:
    """Distinct, deterministic colours ``(K, 3)`` uint8 (golden-ratio hues)."""
    import colorsys

    cols = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95) for i in range(num_classes)]
    return (np.array(cols) * 255).astype(np.uint8)


def compute_dtype(model: SegModel, dtype: str | torch.dtype | None = "fp32",
                  autocast: torch.dtype | None = None) -> str:
    """The short dtype name inference runs in, checked against the model's device.

    ``autocast`` is the older ``--amp`` spelling (a torch dtype or None); given together with a
    reduced ``dtype`` they must agree. Raises ValueError with one line naming the fix."""
    name = parse_dtype(dtype)
    if autocast is not None:
        legacy = parse_dtype(autocast, "--amp")
        if name not in ("fp32", legacy):
            raise ValueError(f"--dtype {name} and --amp {legacy} disagree; pass one of them")
        name = legacy
    return check_dtype(name, next(model.head.parameters()).device)


def _fp32_outputs(outputs):
    """Head outputs as fp32 (a tensor, or Mask2Former's dict), so the scores over classes are
    computed in fp32 whatever the head computed in."""
    if isinstance(outputs, dict):
        return {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in outputs.items()}
    return outputs.float()


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))


@torch.no_grad()
def predict_scores(model: SegModel, rgb: np.ndarray, *, mode: str = "resize", overlap: float = 1 / 3,
                   autocast: torch.dtype | None = None, dtype: str | torch.dtype | None = "fp32") -> torch.Tensor:
    """Per-class fp32 scores ``(K, H, W)`` for one ``(H, W, 3)`` uint8 image, at its own size.

    ``resize``: scale so the longer side is ``image_size`` (aspect kept), pad bottom/right
    to a multiple of 16, predict, crop the padding, upsample to the input size.
    ``slide``: scale so the shorter side is ``image_size``, cover the image with
    ``image_size`` windows overlapping by ``overlap``, average the window scores.
    ``dtype``: the ViT and head compute dtype (module docstring: what stays fp32).
    """
    if mode not in INFERENCE_MODES:
        raise ValueError(f"inference mode must be one of {INFERENCE_MODES}, got {mode!r}")
    name = compute_dtype(model, dtype, autocast)
    with lowp_weights(model.trunk.vit, name):
        return _predict_scores(model, rgb, mode, overlap, None if name == "fp32" else DTYPES[name])


@torch.no_grad()
def _predict_scores(model: SegModel, rgb: np.ndarray, mode: str, overlap: float,
                    autocast: torch.dtype | None) -> torch.Tensor:
    model.eval()
    cfg = model.config
    device = next(model.head.parameters()).device
    height, width = rgb.shape[:2]
    size = cfg.image_size
    scale = size / (max(height, width) if mode == "resize" else min(height, width))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    image = Normalize(cfg.mean, cfg.std)(rgb)[None].to(device)
    image = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False, antialias=scale < 1)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            out = model(x)
        if autocast is not None:
            out = _fp32_outputs(out)
        return model.scores(out, x.shape[-2:])

    if mode == "resize":
        ph, pw = math.ceil(h / PAD_MULTIPLE) * PAD_MULTIPLE, math.ceil(w / PAD_MULTIPLE) * PAD_MULTIPLE
        scores = run(_pad_to(image, ph, pw))[..., :h, :w]
    else:
        ph, pw = max(h, size), max(w, size)
        image = _pad_to(image, ph, pw)
        step = max(PAD_MULTIPLE, int(size * (1 - overlap)) // PAD_MULTIPLE * PAD_MULTIPLE)
        tops = list(range(0, ph - size + 1, step)) or [0]
        lefts = list(range(0, pw - size + 1, step)) or [0]
        if tops[-1] != ph - size:
            tops.append(ph - size)
        if lefts[-1] != pw - size:
            lefts.append(pw - size)
        total = torch.zeros(1, cfg.num_classes, ph, pw, device=device)
        count = torch.zeros(1, 1, ph, pw, device=device)
        for top in tops:
            for left in lefts:
                total[..., top:top + size, left:left + size] += run(image[..., top:top + size, left:left + size])
                count[..., top:top + size, left:left + size] += 1
        scores = (total / count)[..., :h, :w]
    return F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)[0]


def overlay(rgb: np.ndarray, labels: np.ndarray, names: Sequence[str], *, alpha: float = 0.5,
            fps: float | None = None, background: int | None = 0) -> np.ndarray:
    """Blend class colours over the image and append a legend of the classes present
    (all classes when there are at most 20) on the right; optional FPS caption. Pixels of
    class ``background`` keep the image's own colours (None paints every class), so the
    objects stand out instead of the whole frame being tinted."""
    colors = palette(len(names))
    blended = (rgb.astype(np.float32) * (1 - alpha) + colors[labels].astype(np.float32) * alpha).astype(np.uint8)
    if background is not None:
        keep = labels == background
        blended[keep] = rgb[keep]
    present = range(len(names)) if len(names) <= 20 else sorted(set(np.unique(labels).tolist()))
    row = 16
    legend_w = 12 + 8 * max(len(str(names[i])) + (12 if i == background else 0) for i in present) + 24
    canvas = Image.new("RGB", (rgb.shape[1] + legend_w, max(rgb.shape[0], row * (len(present) + 2))), (255, 255, 255))
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = rgb.shape[1] + 6
    for k, cls in enumerate(present):
        y = 6 + k * row
        swatch = (255, 255, 255) if cls == background else tuple(int(c) for c in colors[cls])
        draw.rectangle([x0, y, x0 + 12, y + 12], fill=swatch, outline=(0, 0, 0))
        draw.text((x0 + 18, y), str(names[cls]) + (" (unpainted)" if cls == background else ""), fill=(0, 0, 0))
    if fps is not None:
        draw.text((x0, canvas.height - row), f"{fps:.1f} FPS", fill=(0, 0, 0))
    return np.asarray(canvas)


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_target(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp)


def collect_inputs(spec: str | os.PathLike) -> tuple[str, list[Path]]:
    """``("images", files)`` for an image or a folder of images, ``("video", [file])``."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"folder '{path}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return "images", files
    if not path.is_file():
        raise FileNotFoundError(f"--input '{path}' does not exist; pass an image, a folder of images or a video")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "video", [path]
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "images", [path]
    raise ValueError(f"--input '{path}' is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a video "
                     f"({', '.join(VIDEO_SUFFIXES)})")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predict_images(model: SegModel, files: Sequence[Path], out_dir: Path, *, mode: str = "resize",
                   autocast: torch.dtype | None = None, progress: bool = False, background: int | None = 0,
                   dtype: str | torch.dtype | None = "fp32") -> dict:
    """Write ``<stem>_mask.png`` (class ids) and ``<stem>_overlay.png`` per image; return
    timings (model time only, file IO excluded) and the compute ``dtype``."""
    from tqdm import tqdm

    from .data import load_rgb

    name = compute_dtype(model, dtype, autocast)
    device = next(model.head.parameters()).device
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds = []
    with torch.no_grad(), lowp_weights(model.trunk.vit, name):  # once for all images (no grad: all frozen)
        for path in tqdm(files, desc="predicting", disable=not progress):
            rgb = load_rgb(path)
            _sync(device)
            t0 = time.perf_counter()
            labels = predict_scores(model, rgb, mode=mode, dtype=name).argmax(0).to(torch.uint8).cpu().numpy()
            _sync(device)
            seconds.append(time.perf_counter() - t0)
            _save_png(labels, out_dir / f"{path.stem}_mask.png")
            # no FPS caption on still images: the files must not depend on timing (two runs, same bytes);
            # the timing is in the returned summary
            _save_png(overlay(rgb, labels, model.config.names, background=background),
                      out_dir / f"{path.stem}_overlay.png")
    return {"images": len(files), "seconds": sum(seconds), "fps": len(seconds) / max(sum(seconds), 1e-9),
            "dtype": name}


def evaluate(model: SegModel, pairs: Sequence[tuple[Path, Path]], *, mode: str = "resize",
             dtype: str | torch.dtype | None = "fp32", autocast: torch.dtype | None = None,
             progress: bool = False) -> torch.Tensor:
    """The ``(K, K)`` int64 confusion matrix (rows: truth) of ``model`` over ``(image, mask)``
    pairs at each image's own size; predictions in ``dtype``, counting always in int64."""
    from tqdm import tqdm

    from .data import load_mask, load_rgb
    from .metrics import confusion_matrix

    name = compute_dtype(model, dtype, autocast)
    num_classes = model.config.num_classes
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    with torch.no_grad(), lowp_weights(model.trunk.vit, name):  # no grad: every ViT weight counts as frozen
        for image_path, mask_path in tqdm(pairs, desc="evaluating", disable=not progress):
            labels = predict_scores(model, load_rgb(image_path), mode=mode, dtype=name).argmax(0).cpu()
            conf += confusion_matrix(labels, torch.from_numpy(load_mask(mask_path)), num_classes)
    return conf


def predict_video(model: SegModel, path: Path, out_dir: Path, *, mode: str = "resize",
                  autocast: torch.dtype | None = None, progress: bool = False, max_frames: int | None = None,
                  background: int | None = 0, dtype: str | torch.dtype | None = "fp32") -> dict:
    """Write ``<stem>_overlay.mp4`` with per-frame overlays and the running FPS."""
    name = compute_dtype(model, dtype, autocast)
    with torch.no_grad(), lowp_weights(model.trunk.vit, name):  # once for all frames (no grad: all frozen)
        result = _predict_video(model, path, out_dir, mode=mode, dtype=name, progress=progress,
                                max_frames=max_frames, background=background)
    return dict(result, dtype=name)


def _predict_video(model: SegModel, path: Path, out_dir: Path, *, mode: str, dtype: str, progress: bool,
                   max_frames: int | None, background: int | None) -> dict:
    import cv2
    from tqdm import tqdm

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"OpenCV cannot open video '{path}'; check the file and codec")
    fps_in = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    device = next(model.head.parameters()).device
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{path.stem}_overlay.mp4"
    tmp = out_dir / f".{path.stem}_overlay.tmp.mp4"
    writer = None
    seconds, frames = 0.0, 0
    try:
        for _ in tqdm(range(total or 10**9), total=total, desc="video frames", disable=not progress):
            ok, bgr = capture.read()
            if not ok or (max_frames is not None and frames >= max_frames):
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            _sync(device)
            t0 = time.perf_counter()
            labels = predict_scores(model, rgb, mode=mode, dtype=dtype).argmax(0).to(torch.uint8).cpu().numpy()
            _sync(device)
            seconds += time.perf_counter() - t0
            frames += 1
            shown = overlay(rgb, labels, model.config.names, fps=frames / seconds, background=background)
            if writer is None:
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps_in,
                                         (shown.shape[1], shown.shape[0]))
            writer.write(cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))
    except BaseException:  # Ctrl-C or an error mid-video: no half-written file stays
        if writer is not None:
            writer.release()
            writer = None
        tmp.unlink(missing_ok=True)
        raise
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"video '{path}' has no readable frames")
    os.chmod(tmp, file_mode())
    os.replace(tmp, final)
    return {"frames": frames, "seconds": seconds, "fps": frames / max(seconds, 1e-9), "output": str(final)}
