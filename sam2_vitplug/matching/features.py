"""Pure tensor helpers shared by the bank and the scorer (shapes in the docstrings)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_pixels(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float() / 255.0


def masks_to_grid(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, H, W)`` masks (bool or soft) -> ``(N, h, w)`` area fractions on the feature grid.

    Area averaging keeps every pixel's weight, so a mask smaller than one cell still pools
    from the cell(s) it covers instead of vanishing."""
    masks = masks.float()
    if masks.shape[-2:] == size:
        return masks
    return F.interpolate(masks[:, None], size=size, mode="area")[:, 0]


def masked_pool(grid: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mask-weighted mean of features, L2-normalised.

    Args:
        grid: ``(B, C, h, w)`` features, or ``(C, h, w)`` shared by all masks.
        weights: ``(B, h, w)`` (or ``(N, h, w)`` with a shared grid) non-negative weights.
    Returns:
        ``(B, C)`` (or ``(N, C)``) unit vectors; an all-zero weight map gives a zero vector.
    """
    flat_w = weights.flatten(1)
    if grid.dim() == 3:
        pooled = flat_w @ grid.flatten(1).T
    else:
        pooled = torch.einsum("bn,bcn->bc", flat_w, grid.flatten(2))
    pooled = pooled / flat_w.sum(1, keepdim=True).clamp_min(1e-6)
    return F.normalize(pooled, dim=-1)
