"""High-resolution ViT features: K transforms, one (chunked) batched ViT forward, average.

``HRFeatureExtractor`` wraps a transformers ViT (any family the encoder registry knows):
the image is transformed K times (``transforms.make_transforms``), the K copies are encoded
in batches no larger than the memory budget allows, each token map is upsampled to the target
size and mapped back to the original pixel positions, and the maps are averaged
(``transforms.accumulate_average``, chunk by chunk, so only the output stays in memory).
Optionally the patch embedding runs at stride P/2 (``stride.reduced_stride``); its 4x token
count is part of the memory plan and of the reported cost.

Every check (K, shift, target size, family support, memory budget) runs in
:meth:`HRFeatureExtractor.plan` before any forward.

Reduced precision (``dtype="bf16"|"fp16"``): only the ViT forward runs under autocast (its
``nn.Linear`` weights pre-cast once per call by :func:`precision.lowp_weights`, and dropped
after it, so the memory plan counts them); the token maps leave it as fp32 and the upsampling,
inversion and averaging over the K transforms run in fp32 outside autocast, so the output is an
fp32 tensor either way. ``fp32`` is the exact path: no autocast
context at all (docs/precision.md).
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..encoders.families import EncoderFamily
from ..encoders.tokens import tokens_to_grid
from ..precision import DTYPES, autocast, check_dtype, full_precision, lowp_bytes, lowp_weights
from .stride import check_stride_reduction, reduced_stride
from .transforms import (TransformSet, accumulate_average, apply_transforms, check_target_size, default_shift, grid_size,
                         make_transforms)


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}

# Inference peak of one ViT block, in units of (tokens x hidden x bytes), on top of the residual
# stream: q, k, v, the attention output and the MLP input (about 5C), the MLP hidden layer and its
# activation (2 x intermediate), and allocator slack. Calibrated on CPU (tools/bench_hr_features.py
# reports measured peak against this estimate for every cell).
_BLOCK_ACT = 6.0
_SAFETY = 1.25


def parse_bytes(value: int | float | str | None) -> int | None:
    """``None``/``"none"`` -> None; ``123``, ``"512MiB"``, ``"4GB"``, ``"2g"`` -> bytes."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"memory budget must be positive, got {value!r}")
        return int(value)
    text = str(value).strip().lower().replace(" ", "")
    if text in ("", "none", "null"):
        return None
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)([a-z]*)", text)
    if not match or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"memory budget must be a size like 512MiB, 4GiB or 2GB, got {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _patch(config: Any) -> int:
    patch = config.patch_size
    return int(patch[0] if isinstance(patch, (list, tuple)) else patch)


@dataclass(frozen=True)
class HRPlan:
    """What one call will do and the memory it was planned for (bytes are estimates)."""

    batch: int
    items: int                  # batch * K images through the ViT
    chunk: int                  # images per ViT forward
    grid: tuple[int, int]       # token grid per image
    target: tuple[int, int]
    tokens_per_image: int       # including prefix tokens
    fixed_bytes: int            # output, accumulators, images
    per_item_bytes: int         # one image through the ViT
    budget: int | None

    @property
    def forwards(self) -> int:
        return math.ceil(self.items / self.chunk)

    @property
    def estimated_bytes(self) -> int:
        return self.fixed_bytes + self.chunk * self.per_item_bytes


def estimate_vit_bytes(config: Any, tokens: int, dtype: torch.dtype, *, grad: bool = False) -> int:
    """Estimated peak bytes of one image through a transformers ViT with ``tokens`` tokens.

    Inference keeps one block's activations alive; with autograd every block's are kept.
    Eager attention stores ``heads x tokens^2`` scores twice; SDPA kernels do not."""
    hidden = int(config.hidden_size)
    inter = int(getattr(config, "intermediate_size", 0) or round(getattr(config, "mlp_ratio", 4) * hidden))
    if getattr(config, "use_swiglu_ffn", False) or getattr(config, "use_gated_mlp", False):
        inter *= 2
    elem = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    block = tokens * (_BLOCK_ACT * hidden + 2 * inter) * elem
    if getattr(config, "_attn_implementation", "eager") == "eager":
        block += 2 * int(config.num_attention_heads) * tokens * tokens * elem
    layers = int(config.num_hidden_layers)
    stream = 2 * tokens * hidden * elem
    total = stream + (layers * block if grad else block)
    return int(total * _SAFETY)


class HRFeatureExtractor(nn.Module):
    """Transform-averaged (and optionally stride-reduced) features of a transformers ViT.

    Args:
        model: the transformers ViT (``load_encoder(...).model``); not copied.
        family: its :class:`~sam2_vitplug.encoders.EncoderFamily` (prefix tokens, forward kwargs).
        transforms: K (see :func:`~sam2_vitplug.modeling.transforms.make_transforms`).
        shift, directions, border: the transform set (shift None = a third of the token step:
            P // 3, or P // 6 with stride reduction).
        stride_reduction: run the patch embedding at stride P/2 (4x tokens; families with a
            learned position table or RoPE).
        memory_budget: bytes (or ``"4GiB"``) the call may use on top of what is already
            allocated; the K images are encoded in chunks that fit it. None = one forward.
        layer: ``None`` = ``last_hidden_state`` (final norm applied); an int = that block's
            output with the final norm applied (as the trunk's intermediate taps).
        dtype: compute dtype of the ViT forward, ``fp32`` (exact, default), ``bf16`` or
            ``fp16`` (checked against the model's device: fp16 needs CUDA/MPS). The model's
            weights stay as they are; the averaging stays fp32 and so does the output.
    """

    def __init__(
        self,
        model: nn.Module,
        family: EncoderFamily,
        *,
        transforms: int = 1,
        shift: int | None = None,
        directions: int | None = None,
        border: str = "reflect",
        stride_reduction: bool = False,
        memory_budget: int | str | None = None,
        layer: int | None = None,
        dtype: str | torch.dtype | None = "fp32",
    ) -> None:
        super().__init__()
        param = next(model.parameters())
        self.compute_dtype = check_dtype(dtype, param.device)
        self.vit = model
        self.family = family
        config = model.config
        self.patch_size = _patch(config)
        self.num_prefix_tokens = family.num_prefix_tokens(config)
        self.stride_reduction = bool(stride_reduction)
        if self.stride_reduction:
            check_stride_reduction(model, f"encoder type '{family.name}'")
        self.stride = self.patch_size // 2 if self.stride_reduction else self.patch_size
        if shift is None:  # a third of the token step (default_shift), so also right for stride P/2
            shift = default_shift(self.stride)
        self.tset: TransformSet = make_transforms(transforms, self.patch_size, shift=shift, directions=directions,
                                                  border=border)
        self.memory_budget = parse_bytes(memory_budget)
        num_layers = int(config.num_hidden_layers)
        if layer is not None and not -num_layers <= int(layer) < num_layers:
            raise ValueError(f"layer {layer} is out of range for a ViT with {num_layers} blocks")
        self.layer = None if layer is None else int(layer) % num_layers
        self._forward_kwargs = dict(family.forward_kwargs)

    @property
    def k(self) -> int:
        return self.tset.k

    @property
    def dtype(self) -> torch.dtype:
        """The ViT's parameter dtype (the input is cast to it); read from real parameters, not
        the low-precision copies :func:`precision.lowp_weights` swaps in during a forward."""
        return next(p for p in self.vit.parameters() if isinstance(p, nn.Parameter)).dtype

    @property
    def reduced(self) -> bool:
        """Whether the ViT runs under autocast (``dtype`` bf16/fp16 on an fp32 model)."""
        return self.compute_dtype != "fp32"

    def _linear_bytes(self, grad: bool) -> int:
        """Bytes of the low-precision ``nn.Linear`` copies :func:`precision.lowp_weights` makes for
        one forward (``keep=False``: they exist only during it, so they are part of its plan)."""
        return lowp_bytes(self.vit, self.compute_dtype, grad=grad)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid of a ``height x width`` input (denser with stride reduction)."""
        return grid_size(height, self.patch_size, self.stride), grid_size(width, self.patch_size, self.stride)

    def plan(self, batch: int, height: int, width: int, target_size: tuple[int, int] | None = None,
             *, grad: bool | None = None) -> HRPlan:
        """Check the request and size the chunks; raises ``ValueError`` before any work."""
        if height % self.patch_size or width % self.patch_size or height <= 0 or width <= 0:
            raise ValueError(
                f"input {height}x{width} is not a multiple of the patch size {self.patch_size}; resize it to e.g. "
                f"{max(1, height // self.patch_size) * self.patch_size}x{max(1, width // self.patch_size) * self.patch_size}"
            )
        target = (height, width) if target_size is None else (int(target_size[0]), int(target_size[1]))
        gh, gw = self.grid(height, width)
        check_target_size(target, (gh, gw), (height, width))
        grad = torch.is_grad_enabled() if grad is None else grad
        dtype = DTYPES[self.compute_dtype] if self.reduced else self.dtype  # the activations' dtype
        elem = torch.finfo(dtype).bits // 8
        hidden = int(self.vit.config.hidden_size)
        tokens = self.num_prefix_tokens + gh * gw
        low = dtype in (torch.float16, torch.bfloat16)  # accumulated in fp32 (then cast, for a low-precision model)
        out_elem = 4 if self.reduced else ((4 + elem) if low else elem)
        out_bytes = batch * hidden * target[0] * target[1] * out_elem
        part_bytes = 2 * hidden * gh * target[1] * (4 if low else elem)
        fixed = out_bytes + part_bytes + batch * 3 * height * width * 4 + self._linear_bytes(grad)
        per_item = estimate_vit_bytes(self.vit.config, tokens, dtype, grad=grad) + 3 * height * width * 4
        items = batch * self.k
        if self.memory_budget is None:
            chunk = items
        else:
            chunk = min(items, (self.memory_budget - fixed) // per_item)
            if chunk < 1:
                raise ValueError(
                    f"memory budget {format_bytes(self.memory_budget)} is too small for one image: a {height}x{width} "
                    f"input ({tokens} tokens) needs about {format_bytes(fixed + per_item)} (output "
                    f"{format_bytes(out_bytes)} at {target[0]}x{target[1]}, one ViT forward {format_bytes(per_item)}); "
                    "raise the budget, lower the target size or drop stride reduction"
                )
        return HRPlan(batch, items, int(chunk), (gh, gw), target, tokens, int(fixed), int(per_item),
                      self.memory_budget)

    def token_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3, H, W)`` model-ready pixels -> ``(n, C, gh, gw)`` token map (one ViT forward;
        under autocast for a reduced ``dtype``, the map then cast to fp32)."""
        gh, gw = self.grid(*x.shape[-2:])
        with reduced_stride(self.vit, self.stride), lowp_weights(self.vit, self.compute_dtype, keep=False), \
                autocast(self.compute_dtype, x.device):
            out = self.vit(pixel_values=x.to(self.dtype), output_hidden_states=self.layer is not None,
                           **self._forward_kwargs)
            if self.layer is None:
                tokens = out.last_hidden_state
            else:
                tokens = self.family.final_norm(self.vit)(out.hidden_states[self.layer + 1])
        if self.reduced:
            tokens = tokens.float()
        return tokens_to_grid(tokens, self.num_prefix_tokens, gh, gw, f"{self.family.name} ViT")

    def forward(self, pixels: torch.Tensor, target_size: tuple[int, int] | None = None, *,
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """``(B, 3, H, W)`` model-ready pixels (normalised, H and W multiples of the patch) ->
        ``(B, C, Th, Tw)`` averaged features in the model's dtype, fp32 for a reduced compute
        ``dtype`` (target None = ``H x W``).

        ``progress(n)`` is called after each chunk with the number of images it encoded."""
        batch, _, height, width = pixels.shape
        plan = self.plan(batch, height, width, target_size)
        dtype = self.dtype
        acc_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) or self.reduced else dtype
        out = torch.zeros(batch, int(self.vit.config.hidden_size), *plan.target, dtype=acc_dtype,
                          device=pixels.device)
        # the weights are cast once for all chunks and dropped after the call (the memory plan
        # counts them per call); the averaging never runs under an autocast the caller may hold
        # (fp32 leaves the context as it is: the exact path)
        keep_fp32 = self.reduced
        with lowp_weights(self.vit, self.compute_dtype, keep=False):
            for start in range(0, plan.items, plan.chunk):
                items = range(start, min(start + plan.chunk, plan.items))
                maps = self.token_maps(apply_transforms(pixels, self.tset, items))
                with full_precision(pixels.device) if keep_fp32 else contextlib.nullcontext():
                    accumulate_average(out, maps, items, self.tset, (height, width), patch=self.patch_size,
                                       stride=self.stride)
                del maps
                if progress is not None:
                    progress(len(items))
        return out if self.reduced else out.to(dtype)

    def extra_repr(self) -> str:
        budget = "none" if self.memory_budget is None else format_bytes(self.memory_budget)
        return f"{self.tset.describe()}, stride {self.stride}, memory_budget {budget}, dtype {self.compute_dtype}"
