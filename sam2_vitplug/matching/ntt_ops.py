"""The reference implementation's ("No Time to Train") scoring steps as pure functions.

Each function reproduces one step of ``Sam2MatchingBaselineNoAMG`` exactly (same conventions,
thresholds and order); where the arithmetic is reorganised for speed the docstring says so and
the result is equal up to float32 reassociation (tests/test_ntt_ops.py, tests/test_ntt_golden.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def mask_boxes_inclusive(masks: torch.Tensor) -> torch.Tensor:
    """``(N, h, w)`` bool -> ``(N, 4)`` xyxy with the max index *inclusive* (so a 1-px mask has
    zero width), empty masks ``[0, 0, 0, 0]``: SAM2's ``batched_mask_to_box`` convention, which
    the reference uses for NMS and output boxes (one pixel narrower than pycocotools' ``toBbox``)."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, device=masks.device)
    rows, cols = masks.any(2), masks.any(1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1)
    x0 = torch.where(cols, ar_w, w).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1)
    empty = ~rows.any(1)
    return torch.where(empty[:, None], torch.zeros_like(boxes), boxes).float()


def _upsample_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """``(n_out, n_in)`` weights of 1-D bilinear (antialias, align_corners=False) resizing."""
    # one basis vector per batch item along H; W is 3 wide (kept as is) because the antialiased
    # kernel mishandles a size-1 axis (torch 2.x: a 1-wide W gives other weights along H)
    eye = torch.eye(n_in, device=device)[:, None, :, None].expand(n_in, 1, n_in, 3).contiguous()
    up = F.interpolate(eye, size=(n_out, 3), mode="bilinear", align_corners=False, antialias=True)
    return up[:, 0, :, 1].T


def pool_hard_upsampled(features: torch.Tensor, hard: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Unit mean feature of each hard mask: ``features (C, h, w)`` bilinearly upsampled (antialias)
    to the mask grid ``hard (N, H, W)`` and averaged over the mask (the reference's proposal feature).

    Upsampling is linear and separable, so ``sum_mask(up(F)) = (Wy^T M Wx) . F`` on the token grid:
    the same numbers without the ``(H*W, C)`` upsampled map (C = 1024 makes it 256 MB at 256 px).
    Empty masks give a zero vector."""
    c, h, w = features.shape
    n, big_h, big_w = hard.shape
    if n == 0:
        return features.new_zeros(0, c)
    wy = _upsample_matrix(h, big_h, features.device)  # (H, h)
    wx = _upsample_matrix(w, big_w, features.device)  # (W, w)
    flat = features.flatten(1).T  # (h*w, C)
    out = []
    for start in range(0, n, chunk):
        m = hard[start:start + chunk].to(features.dtype)
        b = m.shape[0]
        # two plain 2-D matmuls (a broadcast batched matmul is ~15x slower under inference_mode)
        mw = (m.reshape(b * big_h, big_w) @ wx).view(b, big_h, w)  # sum over W
        weights = (mw.transpose(1, 2).reshape(b * w, big_h) @ wy).view(b, w, h).transpose(1, 2)  # over H
        sums = weights.reshape(b, h * w) @ flat
        count = m.flatten(1).sum(1, keepdim=True)
        out.append(sums / count.clamp_min(1.0))
    return F.normalize(torch.cat(out), dim=-1)


def _packed(masks: torch.Tensor) -> np.ndarray:
    """``(k, H, W)`` bool -> ``(k, H, ceil(W/8))`` uint8, bits along W (for exact popcounts)."""
    return np.packbits(masks.cpu().numpy(), axis=-1)


def semantic_ios(masks: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor,
                 rank: torch.Tensor | None = None) -> torch.Tensor:
    """``ios_i = max_j |m_i & m_j| / |m_i| * max(0, cos(e_i, e_j))`` over masks ``j`` of ``i``'s class
    ranked ahead of it (``rank``: smaller = ahead; None = index order, the reference's NMS order).

    Exact on the full-resolution masks ``(k, H, W)`` but cheap: a pair is only counted when its
    boxes overlap, and only inside ``m_i``'s box, on bit-packed rows (8 pixels per byte, numpy
    popcount). Empty masks get 0 (the reference divides by zero there). Returns ``(k,)`` float32."""
    k = masks.shape[0]
    ios = torch.zeros(k, dtype=torch.float32)
    if k < 2:
        return ios
    masks = masks.cpu().bool()
    labels = labels.cpu()
    rank = torch.arange(k) if rank is None else rank.cpu()
    emb = F.normalize(embeddings.cpu().float(), dim=-1)
    sim = (emb @ emb.T).clamp_min(0.0)
    boxes = mask_boxes_inclusive(masks).long()
    area = masks.flatten(1).sum(1)
    packed = _packed(masks)
    x0b, x1b = boxes[:, 0] // 8, boxes[:, 2] // 8  # byte columns holding each box
    for i in range(k):
        if area[i] == 0:
            continue
        bx0, by0, bx1, by1 = boxes[i].tolist()
        overlap = (boxes[:, 0] <= bx1) & (boxes[:, 2] >= bx0) & (boxes[:, 1] <= by1) & (boxes[:, 3] >= by0)
        cand = torch.nonzero(overlap & (rank < rank[i]) & (labels == labels[i]) & (area > 0)).flatten()
        if len(cand) == 0:
            continue
        c0, c1 = int(x0b[i]), int(x1b[i]) + 1
        # bits of m_i outside its box are 0, so counting whole bytes of the box's columns is exact
        window = packed[cand.numpy(), by0:by1 + 1, c0:c1] & packed[i, by0:by1 + 1, c0:c1]
        inter = torch.from_numpy(np.bitwise_count(window).reshape(len(cand), -1).sum(1).astype(np.float32))
        ios[i] = (inter / area[i].float() * sim[i, cand]).max()
    return ios


def merge_decay(ios: torch.Tensor, decay: str) -> torch.Tensor:
    """Score factor from the merging weight: ``sqrt``: ``(1 - ios) ** 0.5`` (the reference);
    ``linear``: ``1 - ios``."""
    rest = (1.0 - ios).clamp(0.0, 1.0)
    if decay == "sqrt":
        return rest.sqrt()
    if decay == "linear":
        return rest
    raise ValueError(f"merging.decay={decay!r} is not one of sqrt, linear")
