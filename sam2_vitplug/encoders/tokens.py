"""From a ViT's token sequence to its patch grid, for every family.

transformers ViTs return ``[CLS?, registers?, patches]``; the prefix count differs per family
(``EncoderFamily.num_prefix_tokens``). The count is verified, never assumed, so a wrong
``encoder_type`` fails loudly instead of shifting every patch by a few tokens.
"""

from __future__ import annotations

import torch


def tokens_to_grid(tokens: torch.Tensor, num_prefix: int, grid_h: int, grid_w: int, name: str = "ViT") -> torch.Tensor:
    """``(B, num_prefix + grid_h*grid_w, C)`` -> ``(B, C, grid_h, grid_w)``."""
    batch, count, dim = tokens.shape
    expected = num_prefix + grid_h * grid_w
    if count != expected:
        raise RuntimeError(
            f"{name} returned {count} tokens for a {grid_h}x{grid_w} patch grid; expected {num_prefix} prefix + "
            f"{grid_h * grid_w} patch tokens = {expected}. Is encoder_type right?"
        )
    return tokens[:, count - grid_h * grid_w :].transpose(1, 2).reshape(batch, dim, grid_h, grid_w)
