"""Adaptive point prompting: decode a coarse grid first, then only points the masks leave uncovered.

A regular 32x32 grid spends most of its 1,024 prompts re-finding the same large regions. Here
the prompts are a subset of that same grid (so every adaptive proposal is also a full-grid
proposal): round 0 decodes every ``stride``-th point (an 8x8 grid for 32 and ``start=8``); each
later round halves the stride and decodes the new points that no covering mask covers yet
(covering: predicted IoU >= ``cover_iou``, by default the proposals' threshold, optionally
stable and not larger than ``max_area``); the run stops after the finest round, when no
uncovered point is left, or when a round covers less than ``min_gain`` of the image more than
before (coverage has saturated).

Measured (docs/benchmarks.md): it only saves prompts when masks tile the image, background
included; on models trained on objects alone the background stays uncovered. Opt-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class AdaptiveConfig:
    """Settings of adaptive prompting (``proposals.adaptive`` in ``configs/matching/fewshot.yaml``).

    Attributes:
        start: side of the first, coarse grid (must divide ``points_per_side`` by a power of two).
        min_gain: stop when a round adds less than this fraction of the image to the coverage.
        max_area: masks covering more than this fraction of the image do not count as coverage
            (a whole-image mask would otherwise stop the search); 1.0 counts every mask.
        cover_iou: masks with at least this predicted IoU count as coverage; None: the proposals'
            ``iou_thr``. Higher protects objects from being hidden by a poor mask bleeding over
            them; lower lets masks too poor to be proposals mark explored background.
        cover_stability: only masks with at least this stability score count as coverage
            (upstream ``sam2.utils.amg.calculate_stability_score``, logit offset 1.0).
    """

    start: int = 8
    min_gain: float = 0.0
    max_area: float = 1.0
    cover_iou: float | None = None
    cover_stability: float = 0.0

    def check(self, points_per_side: int) -> None:
        """Raise ``ValueError`` for settings that cannot make a grid schedule."""
        if self.start < 1 or points_per_side % self.start or not _power_of_two(points_per_side // self.start):
            valid = sorted({points_per_side >> k for k in range(points_per_side.bit_length())
                            if points_per_side % (1 << k) == 0})
            raise ValueError(
                f"proposals.adaptive.start={self.start} must divide points_per_side={points_per_side} by a power of "
                f"two: one of {valid}"
            )
        if not 0.0 <= self.min_gain < 1.0:
            raise ValueError(f"proposals.adaptive.min_gain must be in [0, 1), got {self.min_gain}")
        if not 0.0 < self.max_area <= 1.0:
            raise ValueError(f"proposals.adaptive.max_area must be in (0, 1], got {self.max_area}")
        if not 0.0 <= self.cover_stability <= 1.0:
            raise ValueError(f"proposals.adaptive.cover_stability must be in [0, 1], got {self.cover_stability}")


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def grid_rounds(points_per_side: int, start: int) -> list[np.ndarray]:
    """Indices into the row-major ``points_per_side`` grid for each round, coarse to fine.

    Round ``r`` holds the points whose row and column are ``offset (mod stride)`` with
    ``stride = points_per_side // (start * 2**r)`` and ``offset = stride // 2`` (the point nearest
    each coarse cell's centre); points already in an earlier round are left out, so the rounds
    partition the grid."""
    AdaptiveConfig(start=start).check(points_per_side)
    seen = np.zeros((points_per_side, points_per_side), bool)
    rounds = []
    stride = points_per_side // start
    while stride >= 1:
        sel = np.zeros_like(seen)
        off = stride // 2
        sel[off::stride, off::stride] = True
        sel &= ~seen
        seen |= sel
        rounds.append(np.flatnonzero(sel.ravel()))
        stride //= 2
    return rounds


def covered_at(coverage: torch.Tensor, points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Whether each ``(x, y)`` image point falls on ``coverage (h, w)`` (a map over the whole image)."""
    h, w = coverage.shape
    cols = np.clip((points[:, 0] / width * w).astype(int), 0, w - 1)
    rows = np.clip((points[:, 1] / height * h).astype(int), 0, h - 1)
    return coverage.cpu().numpy()[rows, cols]


def adaptive_decode(
    decode: Callable[[np.ndarray, float | None], tuple[torch.Tensor, torch.Tensor]],
    points: np.ndarray,
    points_per_side: int,
    height: int,
    width: int,
    cfg: AdaptiveConfig,
    iou_thr: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Decode grid ``points (n*n, 2)`` (xy image pixels, row-major) adaptively.

    ``decode(indices, thr)`` decodes those grid points and returns the low-res logits
    ``(K, h, w)`` and predicted IoUs ``(K,)`` of the masks whose IoU is at least ``thr`` (None:
    all). Proposals are the masks with IoU >= ``iou_thr``; coverage comes from masks with IoU >=
    ``cfg.cover_iou`` (default: ``iou_thr``), so masks too poor to be proposals can still mark
    their area as explored. Returns the proposals' logits and IoUs, and stats:
    ``decoded_prompts``, ``rounds``, ``coverage`` (final covered fraction)."""
    cfg.check(points_per_side)
    cover_thr = iou_thr if cfg.cover_iou is None else cfg.cover_iou
    decode_thr = None if iou_thr is None or cover_thr is None else min(iou_thr, cover_thr)
    logits, ious = [], []
    coverage = None
    decoded, rounds, covered_frac = 0, 0, 0.0
    for idx in grid_rounds(points_per_side, cfg.start):
        if coverage is not None:
            idx = idx[~covered_at(coverage, points[idx], height, width)]
        if len(idx) == 0:
            break
        low, iou = decode(idx, decode_thr)
        decoded += len(idx)
        rounds += 1
        proposal = iou >= iou_thr if iou_thr is not None else torch.ones_like(iou, dtype=torch.bool)
        logits.append(low[proposal])
        ious.append(iou[proposal])
        on = low > 0
        if coverage is None:
            coverage = torch.zeros(low.shape[-2:], dtype=torch.bool, device=low.device)
        if len(on):
            counts = on.flatten(1).float().mean(1) <= cfg.max_area
            if cover_thr is not None:
                counts &= iou >= cover_thr
            if cfg.cover_stability > 0:
                from sam2.utils.amg import calculate_stability_score

                counts &= calculate_stability_score(low, 0.0, 1.0) >= cfg.cover_stability
            if counts.any():
                coverage |= on[counts].any(0)
        frac = float(coverage.float().mean())
        gain, covered_frac = frac - covered_frac, frac
        if rounds > 1 and gain < cfg.min_gain:
            break
    if not logits:
        raise ValueError("adaptive prompting decoded nothing: the point grid is empty")
    stats = {"decoded_prompts": float(decoded), "rounds": float(rounds), "coverage": covered_frac}
    return torch.cat(logits), torch.cat(ious), stats
