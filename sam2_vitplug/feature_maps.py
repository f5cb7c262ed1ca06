"""High-resolution ViT features (transform-averaged, optionally stride-reduced; docs/architecture.md section
5) of one image or a folder, written as safetensors (key ``features``, ``(C, H, W)``, with the
settings in the file's metadata), plus the 3-component PCA picture people use to judge
features. Every input is checked (images exist, K/shift/target valid, memory budget fits)
before the first forward; every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .images import IMAGE_EXTS, collect_images, decoded_size

logger = logging.getLogger(__name__)

def input_size_for(height: int, width: int, longer: int, patch: int) -> tuple[int, int]:
    """Resize so the longer side is ``longer``, both sides rounded to a multiple of ``patch``."""
    scale = longer / max(height, width)
    return (max(1, int(height * scale / patch + 0.5)) * patch, max(1, int(width * scale / patch + 0.5)) * patch)


def pca_rgb(features: torch.Tensor, max_fit: int = 65536, seed: int = 0) -> np.ndarray:
    """``(C, H, W)`` features -> ``(H, W, 3)`` uint8: the first three principal components as RGB.

    Fitted on up to ``max_fit`` pixels (seeded sample); each component is stretched between its
    1st and 99th percentile, and its sign fixed (largest loading positive) so colours are
    reproducible."""
    channels, height, width = features.shape
    flat = features.reshape(channels, -1).T.float()
    gen = torch.Generator().manual_seed(seed)
    fit = flat if flat.shape[0] <= max_fit else flat[torch.randperm(flat.shape[0], generator=gen)[:max_fit]]
    mean = fit.mean(0)
    centred = fit - mean
    cov = centred.T.double() @ centred.double() / max(1, fit.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)
    comps = vecs[:, -3:].flip(-1).float()  # top 3, largest first
    if comps.shape[1] < 3:
        comps = torch.cat([comps, comps.new_zeros(channels, 3 - comps.shape[1])], 1)
    signs = torch.sign(comps[comps.abs().argmax(0), torch.arange(3)])
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
    fit_proj = centred @ comps
    lo, hi = torch.quantile(fit_proj, 0.01, dim=0), torch.quantile(fit_proj, 0.99, dim=0)
    proj = (flat - mean) @ comps
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    return (rgb.reshape(height, width, 3).numpy() * 255 + 0.5).astype(np.uint8)


def _atomic_save(path: Path, write) -> None:
    from .atomic import atomic_target

    with atomic_target(path) as tmp:
        write(str(tmp))


def save_features(path: Path, features: torch.Tensor, metadata: dict[str, Any]) -> None:
    from .safetensors_io import save_safetensors

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    _atomic_save(path, lambda tmp: save_safetensors({"features": features.contiguous().cpu()}, tmp, metadata=meta))


def save_png(path: Path, rgb: np.ndarray) -> None:
    """Write a picture in the format its suffix names (``.png``, ``.jpg``, ...)."""
    from PIL import Image

    buf = io.BytesIO()
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    Image.fromarray(rgb).save(buf, format=fmt)
    _atomic_save(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def pca_picture(features: torch.Tensor, image: np.ndarray, *, beside: bool = False) -> np.ndarray:
    """The PCA colours resized (bilinear) to the input image's own size, so it can be laid over
    or next to the photo; with ``beside`` the photo and the picture side by side."""
    from PIL import Image

    height, width = image.shape[:2]
    rgb = np.asarray(Image.fromarray(pca_rgb(features)).resize((width, height), Image.BILINEAR))
    return np.concatenate([image, rgb], axis=1) if beside else rgb


# file suffixes that name a file, not a folder, for --out (anything but .safetensors is refused)
FILE_LIKE = (*IMAGE_EXTS, ".pt", ".pth", ".npy", ".npz", ".bin", ".h5", ".json", ".safetensor")


def auto_out_stride(channels: int, input_size: tuple[int, int], image_size: tuple[int, int], elem: int,
                    patch_stride: int) -> int:
    """The smallest output stride whose file (``channels x H/s x W/s`` at ``elem`` bytes) is no
    larger than the decoded image (``h x w x 3`` bytes), but never coarser than the ViT's token
    grid (``patch_stride``), below which the features would be plain token maps resampled."""
    import math

    budget = image_size[0] * image_size[1] * 3
    need = channels * elem * input_size[0] * input_size[1] / max(budget, 1)
    return int(min(patch_stride, max(1, math.ceil(math.sqrt(need)))))


def available_bytes(device: str) -> int | None:
    """Free memory on ``device`` (CUDA: ``mem_get_info``; CPU: ``MemAvailable``), or None."""
    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _destinations(images: list[Path], out: str, pca: str | None) -> list[tuple[Path, Path | None]]:
    """``(features path, pca path)`` per image; a ``.safetensors``/``.png`` name is a file (one
    image only), anything else a folder that gets ``<stem>.safetensors``/``<stem>.png``."""
    out_path, pca_path = Path(out).expanduser(), Path(pca).expanduser() if pca else None
    if len(images) > 1:
        stems = [p.stem for p in images]
        dup = sorted({s for s in stems if stems.count(s) > 1})
        if dup:
            raise ValueError(f"several images share the name(s) {dup[:5]}; their outputs would overwrite each other. "
                             "Run them separately or rename them")
    dests = []
    for image in images:
        dests.append((_dest(out_path, image, ".safetensors", "--out", len(images)),
                      _dest(pca_path, image, ".png", "--pca", len(images)) if pca_path else None))
    return dests


def _dest(path: Path, image: Path, suffix: str, flag: str, count: int) -> Path:
    """``--pca`` takes any picture suffix (``x.jpg`` writes a JPEG); ``--out`` only
    ``.safetensors``; a name like ``x.pt`` is refused rather than made a folder."""
    as_file = path.suffix.lower() == suffix or (flag == "--pca" and path.suffix.lower() in IMAGE_EXTS)
    if as_file:
        if count > 1:
            raise ValueError(f"{flag} '{path}' names one file but {count} images were given; pass a folder instead")
        if path.is_dir():
            raise ValueError(f"{flag} '{path}' is an existing folder; pass another file name or the folder without "
                             "its suffix")
        return path
    if path.suffix.lower() in FILE_LIKE and not path.is_dir():
        raise ValueError(f"{flag} '{path}' looks like a {path.suffix} file, but features are written as {suffix}; "
                         f"pass a {suffix} file name or a folder")
    if path.is_file():
        raise ValueError(f"{flag} '{path}' is an existing file; pass a {suffix} file name or a folder")
    return path / f"{image.stem}{suffix}"


@dataclass(frozen=True)
class FeatureOptions:
    """What ``sam2-vitplug features`` was asked for (its flags, by the same names)."""

    images: list[str]
    encoder: str
    out: str
    encoder_type: str | None = None
    random_init: bool = False
    transforms: int = 8
    shift: int | None = None
    directions: int | None = None
    border: str = "reflect"
    stride_reduction: bool = False
    input_size: int | None = None
    out_stride: int | None = None
    memory_budget: str | None = None
    dtype: str | None = None
    out_dtype: str = "fp32"
    device: str | None = None
    pca: str | None = None
    pca_beside: bool = False
    quiet: bool = False


def write_features(args: FeatureOptions) -> str:
    """Features (and PCA pictures) of every image to files; returns the one-line summary.

    Everything is checked (images decode, destinations, K/shift, the memory plan of every image)
    before the first forward."""
    from tqdm import tqdm

    from .devices import parse_device
    from .encoders import load_encoder
    from .matching.encoder import DEFAULT_INPUT_SIZE
    from .images import load_rgb
    from .modeling.hr_features import HRFeatureExtractor, format_bytes
    from .modeling.trunk import parse_dtype
    from .precision import check_dtype

    images = collect_images(args.images)
    dests = _destinations(images, args.out, args.pca)
    if args.out_stride is not None and args.out_stride < 1:
        raise ValueError(f"--out-stride must be >= 1 (1 = full input resolution), got {args.out_stride}")
    out_dtype = parse_dtype(args.out_dtype) or torch.float32
    device = parse_device(args.device)
    dtype = check_dtype(args.dtype, device)  # compute dtype: autocast around the ViT, fp32 averaging and output
    sizes = [decoded_size(image) for image in images]  # a truncated file fails here, before the model loads

    loaded = load_encoder(args.encoder, args.encoder_type, random_init=args.random_init)
    model = loaded.model.eval().to(device=device)
    extractor = HRFeatureExtractor(model, loaded.family, transforms=args.transforms, shift=args.shift,
                                   directions=args.directions, border=args.border,
                                   stride_reduction=args.stride_reduction, memory_budget=args.memory_budget,
                                   dtype=dtype)
    patch = extractor.patch_size
    default_longer = DEFAULT_INPUT_SIZE.get(patch, 37 * patch)
    if args.input_size is not None and args.input_size < patch:
        raise ValueError(f"--input-size {args.input_size} is smaller than this ViT's patch ({patch} px); use at least "
                         f"{patch}, e.g. the default {default_longer} ({default_longer // patch} patches)")
    longer = args.input_size or default_longer
    preset = loaded.preset
    mean = torch.tensor(preset.mean if preset else (0.485, 0.456, 0.406), device=device).view(1, 3, 1, 1)
    std = torch.tensor(preset.std if preset else (0.229, 0.224, 0.225), device=device).view(1, 3, 1, 1)

    jobs = []
    free = available_bytes(device)
    elem = torch.finfo(out_dtype).bits // 8
    for image, (width, height) in zip(images, sizes):  # every size, target and plan checked before the first forward
        size = input_size_for(height, width, longer, patch)
        stride = args.out_stride or auto_out_stride(int(model.config.hidden_size), size, (height, width), elem,
                                                    extractor.stride)
        target = (max(1, int(size[0] / stride + 0.5)), max(1, int(size[1] / stride + 0.5)))
        plan = extractor.plan(1, *size, target, grad=False)
        if free is not None and plan.estimated_bytes > free:
            raise ValueError(f"--input-size {longer}: '{image.name}' at {size[1]}x{size[0]} px ({plan.tokens_per_image} "
                             f"tokens, output {target[1]}x{target[0]}) needs about {format_bytes(plan.estimated_bytes)}, "
                             f"more than the {format_bytes(free)} free on {device}; lower --input-size (default "
                             f"{default_longer}) or raise --out-stride, or set --memory-budget")
        jobs.append((image, size, target, plan))
    first = jobs[0][3]
    logger.info("features: %s; %d ViT forward(s) of %d image(s) per input, ~%s planned", extractor.tset.describe(),
                first.forwards, first.chunk, format_bytes(first.estimated_bytes))

    meta_common = {"encoder": str(args.encoder), "encoder_type": loaded.family.name, "source": loaded.location,
                   "transforms": extractor.k, "shift": extractor.tset.shift, "directions": extractor.tset.directions,
                   "border": extractor.tset.border, "patch_stride": extractor.stride, "patch_size": patch,
                   "transform_set": extractor.tset.describe(), "dtype": str(out_dtype).replace("torch.", ""),
                   "compute_dtype": dtype}
    bar = tqdm(total=len(jobs) * extractor.k, unit="view", desc="features", disable=args.quiet)
    with torch.inference_mode():
        for (image, size, target, plan), (out_path, pca_path) in zip(jobs, dests):
            photo = load_rgb(image)
            rgb = torch.from_numpy(photo).to(device).permute(2, 0, 1)[None].float() / 255.0
            shrink = size[0] < rgb.shape[-2] or size[1] < rgb.shape[-1]
            rgb = torch.nn.functional.interpolate(rgb, size=size, mode="bilinear", align_corners=False,
                                                  antialias=shrink)
            feats = extractor((rgb - mean) / std, target, progress=bar.update)[0]
            meta = dict(meta_common, image=str(image), input_size=list(size), target_size=list(target),
                        grid=list(plan.grid))
            save_features(out_path, feats.to(out_dtype), meta)
            if pca_path is not None:
                save_png(pca_path, pca_picture(feats.float().cpu(), photo, beside=args.pca_beside))
    bar.close()
    where = dests[0][0] if len(dests) == 1 else dests[0][0].parent
    target = jobs[0][2]
    return (f"wrote features of {len(jobs)} image(s) to {where} ({extractor.tset.describe()}, patch stride "
          f"{extractor.stride}; {str(out_dtype).replace('torch.', '')} at {target[1]}x{target[0]}"
          f"{' for the first' if len(jobs) > 1 else ''}{'' if args.out_stride else '; --out-stride 1 for full resolution'})" + (f"; PCA pictures in {dests[0][1] if len(dests) == 1 else dests[0][1].parent}"
                                   if args.pca else ""))
