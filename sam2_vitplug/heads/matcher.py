"""Hungarian matching of predicted queries to ground-truth segments (Mask2Former-style).

The cost of assigning query ``q`` to target ``t`` is
``w_class * -p_q(class_t) + w_mask * BCE(mask_q, mask_t) + w_dice * dice(mask_q, mask_t)``;
the assignment minimising the total cost is exact (scipy's ``linear_sum_assignment``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def linear_assignment(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost assignment of a ``(Q, T)`` cost tensor -> (query indices, target indices).

    scipy's exact solver; the NaN check is ours because scipy's message does not say where the
    NaN came from (usually diverged predictions)."""
    if not torch.isfinite(cost).all():
        raise ValueError("matching cost has NaN/inf entries; check the predictions for divergence")
    rows, cols = linear_sum_assignment(cost.detach().float().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def solve_assignment(cost: Sequence[Sequence[float]]) -> tuple[list[int], list[int]]:
    """Deprecated alias kept for ``sam2_vitplug.heads.solve_assignment`` importers: scipy's
    ``linear_sum_assignment`` on a nested-list cost, as ``(rows, cols)`` lists sorted by row."""
    if len(cost) == 0 or len(cost[0]) == 0:
        return [], []
    rows, cols = linear_sum_assignment(np.asarray(cost, dtype=float))
    return rows.tolist(), cols.tolist()


def batch_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice loss: ``(Q, P)`` mask logits and ``(T, P)`` binary targets -> ``(Q, T)``."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean binary cross-entropy: ``(Q, P)`` logits, ``(T, P)`` targets -> ``(Q, T)``."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[-1]


@torch.no_grad()
def hungarian_match(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    target_classes: torch.Tensor,
    target_masks: torch.Tensor,
    *,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match one image's queries to its targets.

    Args:
        class_logits: ``(Q, K+1)`` (last class = "no object").
        mask_logits: ``(Q, P)`` flattened mask logits (P sampled or all pixels).
        target_classes: ``(T,)`` class ids.
        target_masks: ``(T, P)`` binary masks at the same pixels.
    Returns:
        (query indices, target indices), each of length ``min(Q, T)``.
    """
    if target_classes.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    prob = class_logits.float().softmax(-1)
    cost = (
        -class_weight * prob[:, target_classes]
        + mask_weight * batch_bce_cost(mask_logits.float(), target_masks.float())
        + dice_weight * batch_dice_cost(mask_logits.float(), target_masks.float())
    )
    return linear_assignment(cost)
