"""The memory bank: one unit vector per reference instance and one prototype per class.

Built by cropping each reference square around its box (with context), encoding the crops in
batches, mask-averaging the patch features and L2-normalising. A class prototype is the
normalised mean of its instance vectors. The bank stores vectors (classes x shots x dim
floats), never token maps, and is saved as ``safetensors`` with metadata that ``load_bank``
checks against the run's encoder.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .encoder import MatcherEncoder, matcher_weights_sha256
from .features import masked_pool, masks_to_grid
from .io import atomic_write_bytes, load_rgb
from .references import BoxPrompter, Reference, reference_mask

logger = logging.getLogger(__name__)

BANK_FORMAT = "sam2_vitplug.fewshot_bank/1"
MEMORY_CHOICES = ("ntt", "vitplug")
LEGACY_METHOD = "vitplug"  # banks written before the method was recorded were built this way


@dataclass
class MemoryBank:
    """Prototypes ``(K, C)``, instance vectors ``(N, C)`` and their class index ``(N,)``."""

    prototypes: torch.Tensor
    instances: torch.Tensor
    instance_labels: torch.Tensor
    class_ids: list[int]
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def encoder(self) -> str:
        return str(self.meta.get("encoder"))

    @property
    def method(self) -> str | None:
        """The few-shot method the bank was built with (None: not recorded)."""
        method = self.meta.get("method")
        return None if method is None else str(method)

    def check_method(self, method: str) -> None:
        """Raise ``ValueError`` if the bank was built for another few-shot method: prototypes of one
        method scored by another's chain would silently give other numbers. A bank that records no
        method (written before methods existed, which was the vitplug way, or a hand-made
        ``MemoryBank``) only gets a warning."""
        if self.method is None:
            logger.warning("the memory bank records no few-shot method (built before methods existed: %s); "
                           "using it with method '%s'", LEGACY_METHOD, method)
            return
        if self.method != str(method):
            raise ValueError(
                f"the memory bank was built with method '{self.method}' but this run uses '{method}'; "
                f"pass --method {self.method} to `fewshot run`, or rebuild the bank with "
                f"`sam2-vitplug fewshot memory --method {method}`"
            )

    @property
    def dtype(self) -> str:
        """The compute dtype the bank's vectors were encoded in (``fp32`` for banks that predate
        the record: everything was fp32 then)."""
        return str(self.meta.get("dtype", "fp32"))

    def dtype_warning(self, dtype: str) -> str | None:
        """One line for stderr when this run computes in another dtype than the bank was built
        in (allowed: prototypes move by ~1e-3 relative in bf16, see docs/precision.md), else None."""
        from ..precision import parse_dtype

        run = parse_dtype(dtype)
        if run == self.dtype:
            return None
        return (f"warning: the memory bank was built in {self.dtype} and this run computes in {run}; "
                f"scores may differ slightly from an all-{run} run (rebuild the bank with --dtype {run} to match)")

    def check_encoder(self, matcher: MatcherEncoder) -> None:
        """Raise ``ValueError`` if the bank was built with another encoder or input size."""
        if self.meta.get("encoder") != matcher.identity or int(self.meta.get("input_size", -1)) != matcher.input_size:
            raise ValueError(
                f"the memory bank was built with encoder '{self.meta.get('encoder')}' at "
                f"{self.meta.get('input_size')} px, but this run uses '{matcher.identity}' at {matcher.input_size} px; "
                "rebuild the bank with `sam2-vitplug fewshot memory --encoder ...` or pass the bank's encoder"
            )
        stored = self.meta.get("encoder_weights_sha256")
        current = matcher_weights_sha256(matcher) if stored is not None else None
        if current is not None and current != stored:  # same name or path, other weights
            raise ValueError(
                f"the memory bank was built with other weights under the encoder name '{matcher.identity}' (weights "
                f"sha256 {stored[:12]}..., now {current[:12]}...): the file was replaced; rebuild the bank with "
                "`sam2-vitplug fewshot memory` or restore the weights it was built with"
            )

    def shuffled(self, seed: int = 0) -> "MemoryBank":
        """A copy with prototypes permuted across classes (a control that must destroy accuracy)."""
        gen = torch.Generator().manual_seed(seed)
        k = len(self.class_ids)
        perm = torch.randperm(k, generator=gen)
        while k > 1 and bool((perm == torch.arange(k)).any()):  # a derangement: no class keeps its own
            perm = torch.randperm(k, generator=gen)
        return MemoryBank(self.prototypes[perm].clone(), self.instances.clone(), self.instance_labels.clone(),
                          list(self.class_ids), list(self.class_names), dict(self.meta))


def crop_box_square(box_xywh: Sequence[float], context: float) -> tuple[float, float, float, float]:
    """The square ``x0, y0, x1, y1`` centred on the box, side ``max(w, h) * (1 + 2 * context)``."""
    x, y, w, h = map(float, box_xywh)
    side = max(w, h, 1.0) * (1.0 + 2.0 * context)
    cx, cy = x + w / 2, y + h / 2
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def crop_box_ntt(box_xywh: Sequence[float], context: float, height: int, width: int) -> tuple[int, int, int, int]:
    """The reference's crop ``x0, y0, x1, y1`` (ints): box corners truncated to int, side
    ``max(w, h) * (1 + context)`` around their centre, each edge truncated and clipped to the image,
    so a crop at the border is not square (it is then stretched to the encoder's square)."""
    x, y, w, h = map(float, box_xywh)
    x1, y1, x2, y2 = int(x), int(y), int(x + w), int(y + h)
    side = max(x2 - x1, y2 - y1) * (1.0 + context)
    mid_x, mid_y = (x1 + x2) * 0.5, (y1 + y2) * 0.5
    return (max(0, int(mid_x - side * 0.5)), max(0, int(mid_y - side * 0.5)),
            min(width, int(mid_x + side * 0.5)), min(height, int(mid_y + side * 0.5)))


def crop_reference_ntt(image: np.ndarray, mask: np.ndarray, box_xywh: Sequence[float], context: float,
                       size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``crop: ntt``: the clipped crop of :func:`crop_box_ntt`, image bicubic (no antialias, values
    not clamped) and mask bilinear to ``(size, size)``, as the reference implementation does."""
    x0, y0, x1, y1 = crop_box_ntt(box_xywh, context, *image.shape[:2])
    pixels = torch.from_numpy(image[y0:y1, x0:x1] / 255.0).permute(2, 0, 1)[None].float()
    soft = torch.from_numpy(mask[y0:y1, x0:x1].astype(np.float32))[None, None]
    crop = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False)[0]
    crop_mask = F.interpolate(soft, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return crop, crop_mask


def pool_instances_ntt(grid: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``pooling: ntt``: masks ``(B, S, S)`` sampled nearest at the token grid (soft values kept);
    the instance vector is the mask-weighted mean of ``grid (B, C, h, w)``, NOT normalised."""
    weights = F.interpolate(masks[:, None].float(), size=tuple(grid.shape[-2:]), mode="nearest")[:, 0].flatten(1)
    feats = grid.flatten(2).transpose(1, 2)  # (B, h*w, C)
    return (feats * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)


def crop_reference(image: np.ndarray, mask: np.ndarray, box_xywh: Sequence[float], context: float,
                   size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``(H, W, 3)`` uint8 and ``(H, W)`` bool to ``(3, size, size)`` in [0, 1] and ``(size, size)``.

    Out-of-image parts of the square are zero (black, no mask)."""
    from torchvision.ops import roi_align

    stacked = torch.from_numpy(np.concatenate([image.astype(np.float32) / 255.0, mask[..., None].astype(np.float32)],
                                              axis=-1)).permute(2, 0, 1)[None]
    box = torch.tensor([[0.0, *crop_box_square(box_xywh, context)]])
    out = roi_align(stacked, box, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)[0]
    return out[:3], out[3]


def build_bank(
    matcher: MatcherEncoder,
    refs: Sequence[Reference],
    image_root: str | os.PathLike,
    class_names: dict[int, str],
    *,
    context: float = 0.2,
    batch_size: int = 16,
    box_prompter: BoxPrompter | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    crop: str = "ntt",
    pooling: str = "ntt",
) -> MemoryBank:
    """Encode ``refs`` (images under ``image_root``) into a :class:`MemoryBank`.

    ``crop``/``pooling``: ``ntt`` (the reference implementation's clipped bicubic crop and
    un-normalised nearest-sampled means) or ``vitplug`` (padded ``roi_align`` square crop, area
    pooling, unit instance vectors). The prototype is always the normalised mean of the
    instance vectors. Every reference image is read and every mask decoded before encoding
    starts, so missing files and empty masks fail before any work is done. The bank records the
    matcher's ``compute_dtype`` (``meta["dtype"]``; fp32 for matchers without one); pooling and
    prototypes are fp32 whatever it is.
    """
    for key, value in (("memory.crop", crop), ("memory.pooling", pooling)):
        if value not in MEMORY_CHOICES:
            raise ValueError(f"{key}={value!r} is not one of {', '.join(MEMORY_CHOICES)}")
    cropper = crop_reference_ntt if crop == "ntt" else crop_reference
    from tqdm import tqdm

    if not refs:
        raise ValueError("no references to build a memory bank from")
    root = Path(image_root)
    size = matcher.input_size
    crops, masks = [], []
    cache: dict[str, np.ndarray] = {}
    for ref in refs:
        if ref.file_name not in cache:
            cache = {ref.file_name: load_rgb(root / ref.file_name)}  # refs are grouped by class, not image
        image = cache[ref.file_name]
        mask = reference_mask(ref, image, box_prompter)
        if not mask.any():
            raise ValueError(f"reference annotation {ref.ann_id} (image {ref.file_name}) has an empty mask; "
                             "fix or drop it from the references json")
        pixels_crop, mask_crop = cropper(image, mask, ref.bbox, context, size)
        crops.append(pixels_crop)
        masks.append(mask_crop)
    vectors = []
    device = getattr(matcher, "device", torch.device("cpu"))
    for start in tqdm(range(0, len(crops), batch_size), desc="memory bank", disable=not progress):
        pixels = torch.stack(crops[start:start + batch_size]).to(device)
        grid = matcher.encode(pixels)
        batch_masks = torch.stack(masks[start:start + batch_size]).to(grid.device)
        if pooling == "ntt":
            vectors.append(pool_instances_ntt(grid, batch_masks).float().cpu())
        else:
            vectors.append(masked_pool(grid, masks_to_grid(batch_masks, tuple(grid.shape[-2:]))).float().cpu())
    instances = torch.cat(vectors)
    class_ids = sorted({ref.category_id for ref in refs})
    index = {c: i for i, c in enumerate(class_ids)}
    labels = torch.tensor([index[ref.category_id] for ref in refs], dtype=torch.long)
    prototypes = torch.stack([F.normalize(instances[labels == i].mean(0), dim=0) for i in range(len(class_ids))])
    # the method a run must use with this bank: the pooling decides what the vectors mean
    # (un-normalised means for ntt, unit vectors for vitplug); an explicit meta["method"] wins
    info = {"format": BANK_FORMAT, "encoder": matcher.identity, "encoder_weights_sha256": matcher_weights_sha256(matcher),
            "input_size": size, "context": context, "dtype": str(getattr(matcher, "compute_dtype", "fp32")),
            "crop": crop, "pooling": pooling, "method": "ntt" if pooling == "ntt" else "vitplug",
            "dim": int(instances.shape[1]), "num_instances": len(refs),
            "ann_ids": [r.ann_id for r in refs], **(meta or {})}
    from ..version import __version__

    info.setdefault("package_version", __version__)
    return MemoryBank(prototypes, instances, labels, class_ids, [class_names.get(c, str(c)) for c in class_ids], info)


def save_bank(bank: MemoryBank, path: str | os.PathLike) -> None:
    """Write ``bank`` as safetensors (atomic); metadata values are JSON strings."""
    from ..safetensors_io import safetensors_bytes as save  # canonical header: same bytes in every process

    check_bank_tensors({"prototypes": bank.prototypes, "instances": bank.instances,
                        "instance_labels": bank.instance_labels}, bank.class_ids, bank.class_names, Path(path))
    meta = {"meta": json.dumps(bank.meta, sort_keys=True), "class_ids": json.dumps(bank.class_ids),
            "class_names": json.dumps(bank.class_names)}
    tensors = {"prototypes": bank.prototypes.contiguous().float(), "instances": bank.instances.contiguous().float(),
               "instance_labels": bank.instance_labels.contiguous()}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def check_bank_tensors(tensors: dict[str, torch.Tensor], class_ids: Any, class_names: Any, path: Path) -> None:
    """``ValueError`` naming the mismatch when a bank's parts disagree or hold NaN/inf: a run with
    such a bank would score nothing ("0 detections") or fail with an IndexError mid-run."""
    fix = "rebuild it with `sam2-vitplug fewshot memory`"
    absent = [k for k in ("prototypes", "instances", "instance_labels") if k not in tensors]
    if absent:
        raise ValueError(f"memory bank '{path}' lacks the tensors {absent}; {fix}")
    protos, inst, labels = tensors["prototypes"], tensors["instances"], tensors["instance_labels"]
    if protos.ndim != 2 or inst.ndim != 2 or labels.ndim != 1 or protos.shape[1] != inst.shape[1] \
            or labels.shape[0] != inst.shape[0]:
        raise ValueError(f"memory bank '{path}' has inconsistent shapes: prototypes {tuple(protos.shape)}, "
                         f"instances {tuple(inst.shape)}, instance_labels {tuple(labels.shape)}; {fix}")
    for name in ("prototypes", "instances"):
        bad = int((~torch.isfinite(tensors[name])).any(dim=1).sum())
        if bad:
            raise ValueError(f"memory bank '{path}' has NaN/inf in {bad} of {tensors[name].shape[0]} {name} rows "
                             f"(a reference crop the encoder could not represent); {fix}")
    if not isinstance(class_ids, list) or not isinstance(class_names, list) \
            or not len(class_ids) == len(class_names) == protos.shape[0]:
        raise ValueError(f"memory bank '{path}' lists {len(class_ids) if isinstance(class_ids, list) else '?'} class "
                         f"ids and {len(class_names) if isinstance(class_names, list) else '?'} names for "
                         f"{protos.shape[0]} prototypes; {fix}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= protos.shape[0]):
        raise ValueError(f"memory bank '{path}' has instance labels outside 0..{protos.shape[0] - 1}; {fix}")


def load_bank(path: str | os.PathLike, matcher: MatcherEncoder | None = None) -> MemoryBank:
    """Read a bank written by :func:`save_bank`; with ``matcher``, check it was built with it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"memory bank '{path}' does not exist; build it with `sam2-vitplug fewshot memory`")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads(raw["meta"])
        class_ids, class_names = json.loads(raw["class_ids"]), json.loads(raw["class_names"])
    except Exception as err:  # safetensors raises several types for foreign files
        raise ValueError(f"'{path}' is not a sam2-vitplug memory bank ({type(err).__name__}: {err})") from err
    if meta.get("format") != BANK_FORMAT:
        raise ValueError(f"'{path}' has bank format {meta.get('format')!r}; expected {BANK_FORMAT!r}")
    check_bank_tensors(tensors, class_ids, class_names, path)
    bank = MemoryBank(tensors["prototypes"], tensors["instances"], tensors["instance_labels"],
                      [int(c) for c in class_ids], list(class_names), meta)
    if matcher is not None:
        bank.check_encoder(matcher)
    return bank


def bank_dtype_warning(bank: MemoryBank, dtype: str) -> str | None:
    """:meth:`MemoryBank.dtype_warning`: the line to print when ``bank`` was built in another
    dtype than ``dtype``, or None."""
    return bank.dtype_warning(dtype)
