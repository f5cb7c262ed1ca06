"""Patch-embedding stride reduction (the "ViT feature extractor" trick, Amir et al. 2021).

Running the patch-embedding convolution with step ``P/2`` instead of ``P`` gives overlapping
patches and a ``(2g-1) x (2g-1)`` token grid from the same image: sharper maps, at a price
the caller must see: 4x the tokens per halving, so about 4x the MLP cost and 16x the
attention cost.

transformers has no switch for this, so :func:`reduced_stride` wraps the model for the
duration of a ``with`` block (upstream code is not edited, and everything is restored after):

* the patch ``nn.Conv2d`` (``embeddings.patch_embeddings[.projection]``) gets the smaller stride;
* models with learned position tables (DINOv2, DINOv2 with registers, I-JEPA, ViT) size the
  table with ``embeddings.interpolate_pos_encoding(embeddings, height, width)`` from
  ``height // patch``; the wrapper passes the virtual size ``grid * patch`` so the table is
  interpolated to the real, denser grid (whatever rule is installed, Meta's or HF's);
* models with RoPE (DINOv3: ``rope_embeddings(pixel_values)`` reads only the shape) get a
  zero-copy view of the virtual shape, so the rotary coordinates cover the denser grid.

Any other model raises ``NotImplementedError`` naming what is missing.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .transforms import grid_size


def _patch_size(model: nn.Module) -> int:
    patch = model.config.patch_size
    return int(patch[0] if isinstance(patch, (list, tuple)) else patch)


def patch_conv(model: nn.Module) -> nn.Conv2d | None:
    """The patch-embedding convolution of a transformers ViT (kernel = stride = patch), or None."""
    patch = _patch_size(model)
    embeddings = getattr(model, "embeddings", None)
    if embeddings is None:
        return None
    for module in embeddings.modules():
        if isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (patch, patch):
            return module
    return None


def _position_kind(model: nn.Module) -> str | None:
    rope = getattr(model, "rope_embeddings", None)
    if isinstance(rope, nn.Module):
        return "rope"
    embeddings = getattr(model, "embeddings", None)
    if callable(getattr(embeddings, "interpolate_pos_encoding", None)):
        return "table"
    return None


def stride_reduction_unsupported(model: nn.Module, name: str = "this model") -> str | None:
    """Why stride reduction cannot be applied to ``model`` (None when it can)."""
    patch = _patch_size(model)
    if patch % 2:
        return f"{name} has an odd patch size {patch}; the stride P/2 must be a whole number of pixels"
    conv = patch_conv(model)
    if conv is None:
        return f"{name} ({type(model).__name__}) has no {patch}x{patch} patch-embedding Conv2d under .embeddings"
    if tuple(conv.stride) != (patch, patch):
        return f"{name}'s patch embedding already has stride {tuple(conv.stride)}"
    if _position_kind(model) is None:
        return (f"{name} ({type(model).__name__}) has neither embeddings.interpolate_pos_encoding (learned "
                "position table) nor rope_embeddings (RoPE), so its positions cannot follow a denser grid")
    return None


def check_stride_reduction(model: nn.Module, name: str = "this model") -> None:
    """Raise ``NotImplementedError`` when :func:`reduced_stride` cannot handle ``model``."""
    reason = stride_reduction_unsupported(model, name)
    if reason is not None:
        raise NotImplementedError(f"stride reduction is not available: {reason}. Run without stride reduction.")


@contextlib.contextmanager
def reduced_stride(model: nn.Module, stride: int) -> Iterator[None]:
    """Run ``model`` with patch-embedding step ``stride`` inside the block (restored on exit).

    A ``H x W`` input then gives ``grid_size(H, P, stride) x grid_size(W, P, stride)`` patch
    tokens. Not thread-safe and not for ``torch.compile`` (it swaps attributes on the model).
    """
    patch = _patch_size(model)
    stride = int(stride)
    if stride == patch:
        yield
        return
    if stride < 1 or stride > patch or patch % stride:
        raise ValueError(f"stride must divide the patch size {patch} (e.g. {patch // 2}), got {stride}")
    check_stride_reduction(model)
    conv = patch_conv(model)
    assert conv is not None  # checked above
    kind = _position_kind(model)
    old_stride = conv.stride
    if kind == "rope":
        target = model.rope_embeddings
        attr = "forward"
        original = target.forward

        def patched(pixel_values: torch.Tensor, *args, **kwargs):  # DINOv3ViTRopePositionEmbedding.forward
            gh, gw = (grid_size(s, patch, stride) for s in pixel_values.shape[-2:])
            virtual = pixel_values[:1, :1, :1, :1].expand(1, 1, gh * patch, gw * patch)
            return original(virtual, *args, **kwargs)
    else:
        target = model.embeddings
        attr = "interpolate_pos_encoding"
        original = target.interpolate_pos_encoding

        def patched(embeddings: torch.Tensor, height: int, width: int):  # *Embeddings.interpolate_pos_encoding
            gh, gw = grid_size(height, patch, stride), grid_size(width, patch, stride)
            return original(embeddings, gh * patch, gw * patch)

    had_own = attr in vars(target)
    saved = vars(target).get(attr)
    conv.stride = (stride, stride)
    setattr(target, attr, patched)
    try:
        yield
    finally:
        conv.stride = old_stride
        if had_own:
            setattr(target, attr, saved)
        else:
            delattr(target, attr)
