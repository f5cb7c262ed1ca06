"""Hungarian matching of predicted queries to ground-truth segments (Mask2Former-style).

The cost of assigning query ``q`` to target ``t`` is
``w_class * -p_q(class_t) + w_mask * BCE(mask_q, mask_t) + w_dice * dice(mask_q, mask_t)``;
the assignment minimising the total cost is exact (scipy's ``linear_sum_assignment`` when
scipy is installed, else :func:`solve_assignment`, a pure-Python O(n^2 m) Hungarian solver).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def solve_assignment(cost: Sequence[Sequence[float]]) -> tuple[list[int], list[int]]:
    """Exact minimum-cost assignment for an ``n x m`` cost matrix.

    Returns ``(rows, cols)`` of length ``min(n, m)``, sorted by row, like scipy's
    ``linear_sum_assignment``. Shortest-augmenting-path Hungarian method with potentials.
    """
    n = len(cost)
    m = len(cost[0]) if n else 0
    if n == 0 or m == 0:
        return [], []
    transposed = n > m
    if transposed:  # the algorithm needs rows <= cols
        cost = [[cost[i][j] for i in range(n)] for j in range(m)]
        n, m = m, n
    inf = math.inf
    u = [0.0] * (n + 1)
    v = [0.0] * (m + 1)
    match = [0] * (m + 1)  # match[j] = row (1-based) assigned to column j
    way = [0] * (m + 1)
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        minv = [inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = match[j0], inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = cost[i0 - 1][j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[match[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    pairs = sorted((match[j] - 1, j - 1) for j in range(1, m + 1) if match[j])
    if transposed:
        pairs = sorted((c, r) for r, c in pairs)
    return [p[0] for p in pairs], [p[1] for p in pairs]


def linear_assignment(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost assignment of a ``(Q, T)`` cost tensor -> (query indices, target indices)."""
    if not torch.isfinite(cost).all():
        raise ValueError("matching cost has NaN/inf entries; check the predictions for divergence")
    array = cost.detach().float().cpu()
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # pragma: no cover - scipy is normally present
        rows, cols = solve_assignment(array.tolist())
    else:
        rows, cols = linear_sum_assignment(array.numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


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
