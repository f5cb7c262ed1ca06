"""Position-embedding interpolation that matches Meta's DINOv2 code.

Why this exists: the DINOv2 checkpoints were trained (and evaluated by Meta) with
position embeddings resized by ``F.interpolate(..., scale_factor=(g + 0.1) / M,
mode="bicubic")``. transformers' ``Dinov2Embeddings`` resizes with
``size=(g_h, g_w)`` instead. Both give a ``g x g`` grid, but the sampling
coordinates differ: with ``scale_factor`` (and no ``recompute_scale_factor``)
PyTorch maps output pixel ``i`` to input ``(i + 0.5) * M / (g + 0.1) - 0.5``
rather than ``(i + 0.5) * M / g - 0.5``. On the real DINOv2 position embeddings
this changes them by 2e-2..5e-2 max abs at 224/448/602/896 px, which then shows
up in every patch token. SAM 2 runs the trunk at non-native sizes, so we
reproduce Meta's rule exactly.

Scope: only plain ``dinov2`` (``Dinov2Model``) models need this. For
``Dinov2WithRegisters`` transformers already uses ``size=..., antialias=True``,
which is what Meta's later (register-era) code does, so it is left alone.
"""

from __future__ import annotations

import logging
import math
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["meta_interpolate_pos_embed", "use_meta_pos_interpolation"]

#: Value stored on an embeddings module once its interpolation has been replaced.
POS_INTERP_ATTR = "_sam2_vitplug_pos_interp"


def meta_interpolate_pos_embed(
    position_embeddings: Tensor, grid_h: int, grid_w: int, num_prefix: int = 1
) -> Tensor:
    """Resize a square DINOv2 position table to a ``grid_h x grid_w`` patch grid, Meta's way.

    Args:
        position_embeddings: ``(1, num_prefix + M*M, C)``; the first ``num_prefix``
            rows (the CLS embedding) are not spatial and are kept as they are.
        grid_h: number of patch rows of the input (``H // patch``).
        grid_w: number of patch columns of the input (``W // patch``).
        num_prefix: number of non-spatial leading embeddings.

    Returns:
        ``(1, num_prefix + grid_h*grid_w, C)`` in the dtype of ``position_embeddings``.
        When the stored grid already is ``grid_h x grid_w`` the input is returned unchanged.

    The resize is done in float32 with ``scale_factor=((grid_h + 0.1) / M, (grid_w + 0.1) / M)``
    (not ``size=``) because that is what the checkpoints were trained with; the +0.1 only
    guards the floor in the output-size computation, but the scale factor it produces is also
    what positions the bicubic samples, so it must be kept to match Meta bit for bit.
    (Meta's code calls the first spatial dim "w"; it is the height.)
    """
    if position_embeddings.dim() != 3:
        raise ValueError(
            f"position_embeddings must be (1, num_prefix + M*M, C), got shape {tuple(position_embeddings.shape)}"
        )
    num_positions = position_embeddings.shape[1] - num_prefix
    side = int(math.isqrt(num_positions)) if num_positions > 0 else 0
    if side * side != num_positions or side == 0:
        raise ValueError(
            f"expected a square patch grid after {num_prefix} prefix embedding(s), "
            f"got {num_positions} positions (shape {tuple(position_embeddings.shape)})"
        )
    grid_h, grid_w = int(grid_h), int(grid_w)
    if (grid_h, grid_w) == (side, side):
        return position_embeddings

    dim = position_embeddings.shape[-1]
    in_dtype = position_embeddings.dtype
    prefix = position_embeddings[:, :num_prefix]
    grid = position_embeddings[:, num_prefix:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    # float32: bicubic in half precision visibly shifts the embeddings.
    grid = F.interpolate(
        grid.float(),
        scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side),
        mode="bicubic",
    )
    if tuple(grid.shape[-2:]) != (grid_h, grid_w):
        raise RuntimeError(
            f"position-embedding interpolation produced a {tuple(grid.shape[-2:])} grid, expected {(grid_h, grid_w)}"
        )
    grid = grid.to(in_dtype).permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat((prefix, grid), dim=1)


def _meta_interpolate_pos_encoding(self: nn.Module, embeddings: Tensor, height: int, width: int) -> Tensor:
    """Drop-in for ``Dinov2Embeddings.interpolate_pos_encoding`` using Meta's rule.

    Reads ``position_embeddings`` on every call (nothing cached), so it stays correct
    after ``load_state_dict``/``.to()`` and traces cleanly under ``torch.compile``.
    """
    patch = self.patch_embeddings.patch_size
    patch_h, patch_w = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    return meta_interpolate_pos_embed(self.position_embeddings, height // patch_h, width // patch_w, num_prefix=1)


def use_meta_pos_interpolation(embeddings_module: nn.Module) -> None:
    """Make one ``Dinov2Embeddings`` instance interpolate position embeddings like Meta's DINOv2.

    Binds a replacement ``interpolate_pos_encoding`` on this instance only (the class,
    and so every other DINOv2 model in the process, is untouched) and records
    ``embeddings_module._sam2_vitplug_pos_interp = "meta"``.

    Use it for plain ``dinov2`` models loaded from Meta's checkpoints: transformers'
    ``size=(g, g)`` rule differs from the rule they were trained with by 2e-2..5e-2 max abs
    at 224/448/602/896 px. Do not use it for ``Dinov2WithRegisters``: transformers'
    ``size=..., antialias=True`` rule there already equals Meta's code for register models.
    """
    for attr in ("position_embeddings", "patch_embeddings", "interpolate_pos_encoding"):
        if not hasattr(embeddings_module, attr):
            raise TypeError(
                f"use_meta_pos_interpolation expects a transformers Dinov2Embeddings module "
                f"(model.embeddings); {type(embeddings_module).__name__} has no '{attr}'"
            )
    if hasattr(embeddings_module, "register_tokens"):
        logger.warning(
            "use_meta_pos_interpolation applied to %s which has register tokens; transformers' own "
            "interpolation already matches Meta's register-model code",
            type(embeddings_module).__name__,
        )
    embeddings_module.interpolate_pos_encoding = types.MethodType(_meta_interpolate_pos_encoding, embeddings_module)
    setattr(embeddings_module, POS_INTERP_ATTR, "meta")
