"""Pre-cast a frozen model's linear weights for an autocast region, exactly and reversibly.

Why: :func:`torch.autocast` caches its weight casts only for leaf tensors that require grad,
so a frozen ViT (``requires_grad=False``) has every ``nn.Linear`` weight and bias re-cast to
bf16/fp16 on every forward (hundreds of cast kernels and a full read/write of the weights per
call). Autocast runs ``F.linear`` on its inputs cast to the low dtype, so handing it weights
that are already in that dtype is bit-identical (the same round-to-nearest cast, done once).

Only ``nn.Linear`` is cast: its parameters feed nothing but ``F.linear``. Norms, layer scales,
position tables and convolutions keep fp32: pre-casting the patch-embedding convolution too
(as ``precision.lowp_weights`` does) changes transformers' DINOv3 outputs (measured: 1e-3 on
the tiny test model), because that model casts its input to the convolution's weight dtype;
``tests/test_dtype_heads_features.py`` checks every family bit for bit. The originals are restored on exit, so the model is unchanged afterwards and the
fp32 path never sees a low-precision weight.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..precision import DTYPES, parse_dtype, precast_enabled


@contextlib.contextmanager
def precast_linear_weights(module: nn.Module, dtype: str | torch.dtype | None) -> Iterator[int]:
    """Within the context, the fp32 weight and bias of every ``nn.Linear`` in ``module`` hold
    ``dtype`` copies (yields how many tensors were cast); fp32 (or None) is a no-op, and so is
    ``precision.precast(False)`` (benchmarks: autocast alone); tensors already in another dtype
    (an enclosing call) are left alone."""
    name = parse_dtype(dtype)
    if name == "fp32" or not precast_enabled():
        yield 0
        return
    low = DTYPES[name]
    saved: list[tuple[nn.Parameter, torch.Tensor]] = []
    with torch.inference_mode(False), torch.no_grad():
        for sub in module.modules():
            if not isinstance(sub, nn.Linear):
                continue
            for param in (sub.weight, sub.bias):
                if param is not None and param.dtype == torch.float32:
                    saved.append((param, param.data))
                    param.data = param.data.to(low)
    try:
        yield len(saved)
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for param, original in saved:
                param.data = original
