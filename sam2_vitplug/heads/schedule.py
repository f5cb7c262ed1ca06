"""Learning-rate schedule: linear warmup, then cosine or polynomial decay (per step)."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, kind: str = "cosine", min_ratio: float = 0.0,
              power: float = 0.9) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if kind not in ("cosine", "poly"):
        raise ValueError(f"schedule must be 'cosine' or 'poly', got {kind!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if kind == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        shape = (1 - progress) ** power
    return min_ratio + (1 - min_ratio) * shape


def make_scheduler(optimizer: torch.optim.Optimizer, **kwargs) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`lr_factor`; its state (the step) goes into checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, **kwargs))
