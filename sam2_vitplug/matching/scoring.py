"""Scoring and post-processing as pure tensor functions (device taken from the inputs).

Shapes: N proposals, K classes, C feature channels, ``(h, w)`` a low-resolution mask grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_similarity(embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(N, C) x (K, C) -> (N, K)``, clamped at 0 (anti-correlated = unrelated)."""
    return (F.normalize(embeddings, dim=-1) @ F.normalize(prototypes, dim=-1).T).clamp_min(0.0)


def assign_labels(similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, K)`` -> ``(N,)`` best similarity and ``(N,)`` class index (argmax; ties -> lowest index)."""
    if similarity.shape[0] == 0:
        return similarity.new_zeros(0), torch.zeros(0, dtype=torch.long, device=similarity.device)
    best, labels = similarity.max(1)
    return best, labels


def class_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_thr: float) -> torch.Tensor:
    """Per-class greedy box NMS. ``(N, 4)`` xyxy, ``(N,)``, ``(N,)`` -> kept indices, best score first."""
    from torchvision.ops import batched_nms

    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return batched_nms(boxes.float(), scores.float(), labels, iou_thr)


def lowres_ios(masks: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor, mask_thr: float = 0.5,
               rank: torch.Tensor | None = None) -> torch.Tensor:
    """Merging weight on low-res masks ``(N, h, w)``: ``w_i = max_j |m_i & m_j| / |m_i| * max(0, cos(e_i, e_j))``
    over masks ``j`` of ``i``'s class ranked ahead (``rank``: smaller = ahead; None = index order)."""
    n = labels.shape[0]
    if n == 0:
        return torch.zeros(0, device=masks.device)
    binary = (masks > mask_thr).flatten(1).float()
    area = binary.sum(1).clamp_min(1.0)
    overlap = (binary @ binary.T) / area[:, None]  # row i: fraction of mask i covered by mask j
    sim = (F.normalize(embeddings, dim=-1) @ F.normalize(embeddings, dim=-1).T).clamp_min(0.0)
    rank = torch.arange(n, device=masks.device) if rank is None else rank.to(masks.device)
    ahead = rank[None, :] < rank[:, None]
    same = labels[None, :] == labels[:, None]
    weight = torch.where(ahead & same, overlap * sim, torch.zeros_like(overlap))
    return weight.amax(1).clamp(0.0, 1.0)


def soft_merge(masks: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor,
               mask_thr: float = 0.5) -> torch.Tensor:
    """Semantic-aware soft merging (the vitplug preset): damp each mask by its overlap with better masks of its class.

    For mask i and every mask j of the same class with a higher score (ties: lower index),
    ``w_ij = |m_i & m_j| / |m_i| * max(0, cos(e_i, e_j))``; the new score is
    ``s_i * (1 - max_j w_ij)``. Runs on the low-res grid ``masks: (N, h, w)``; returns ``(N,)`` scores.
    """
    if scores.shape[0] == 0:
        return scores.clone()
    order = torch.sort(scores, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return scores * (1.0 - lowres_ios(masks, labels, embeddings, mask_thr, rank))


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` best scores, best first (stable for ties)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k]
