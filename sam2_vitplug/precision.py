"""Compute precision for inference: one name per dtype, one check per device, one context.

Why: every inference path (few-shot memory/run, features, segmentation heads) takes the same
``--dtype {fp32,bf16,fp16}`` and must refuse the same unsupported combinations with the same
one-line message, before any model is built. ``fp32`` is the exact path and the default;
reduced precision runs the heavy matmuls and convolutions under :func:`torch.autocast`
(weights stay fp32, so a model can switch dtype per call), and each caller keeps the
numerically delicate steps (thresholds, NMS, merging, scores) in fp32 itself.

Fast bf16 on a CPU needs AVX512-BF16 or AMX; :func:`cpu_fast_bf16` asks torch's own CPU
capability query, never the CPU's model name.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# every spelling accepted for a dtype -> its short name (the trunk's force_dtype reads the same table)
DTYPE_NAMES: dict[str, str] = {**{n: n for n in DTYPES}, "float32": "fp32", "float": "fp32", "bfloat16": "bf16",
                               "float16": "fp16", "half": "fp16"}
DTYPE_HELP = ("compute dtype: fp32 (exact, default), bf16 (CPUs with AVX512-BF16/AMX, CUDA GPUs with bf16) "
              "or fp16 (CUDA/MPS only); heavy matmuls run under autocast, thresholds, NMS and scores stay fp32")


def parse_dtype(name: str | torch.dtype | None, flag: str = "--dtype") -> str:
    """``None`` -> ``fp32``; ``fp32``/``bf16``/``fp16`` (or the torch dtype) -> its short name.
    Raises ValueError with one line naming the value and the choices."""
    if name is None:
        return "fp32"
    if isinstance(name, torch.dtype):
        for short, dtype in DTYPES.items():
            if dtype == name:
                return short
        raise ValueError(f"{flag} {name} is not supported; use one of {', '.join(DTYPES)}")
    value = DTYPE_NAMES.get(str(name).strip().lower())
    if value is None:
        raise ValueError(f"{flag} {name!r} is not a dtype; use one of {', '.join(DTYPES)}")
    return value


def device_type(device: str | torch.device) -> str:
    """``cuda:1`` -> ``cuda``; the ``device_type`` :func:`torch.autocast` wants."""
    return torch.device(device).type


def cpu_fast_bf16() -> bool:
    """Whether this CPU has native bf16 matmul (AVX512-BF16 or AMX tiles), per torch's CPU
    capability query (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and bool(fn()):
            return True
    return False


def check_dtype(dtype: str | torch.dtype | None, device: str | torch.device, flag: str = "--dtype") -> str:
    """The short dtype name, after checking ``device`` can compute in it.

    fp16 needs CUDA or MPS (CPU autocast in fp16 is emulated and slow); bf16 needs a CUDA
    device that supports it, or any CPU (emulated, hence slow, without AVX512-BF16/AMX: use
    :func:`cpu_fast_bf16` to decide a default). Raises ValueError with the fix."""
    name = parse_dtype(dtype, flag)
    kind = device_type(device)
    if name == "fp16" and kind == "cpu":
        raise ValueError(f"{flag} fp16 needs a CUDA or MPS device (this is {device}); use {flag} bf16 on a CPU")
    if name == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{flag} bf16: {torch.cuda.get_device_name(torch.device(device))} has no bf16 support; "
                         f"use {flag} fp16")
    if name == "bf16" and kind == "mps":
        raise ValueError(f"{flag} bf16 is not supported on MPS here; use {flag} fp16")
    return name


@contextlib.contextmanager
def autocast(dtype: str | torch.dtype | None, device: str | torch.device) -> Iterator[None]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op context for fp32 (so the
    exact path is exactly the code without autocast)."""
    name = parse_dtype(dtype)
    if name == "fp32":
        yield
        return
    with torch.autocast(device_type(device), dtype=DTYPES[name]):
        yield


@contextlib.contextmanager
def full_precision(device: str | torch.device) -> Iterator[None]:
    """Leave any enclosing autocast region: the steps that must stay fp32 (mask thresholds,
    NMS, merging, scoring) run inside this context on fp32 inputs."""
    with torch.autocast(device_type(device), enabled=False):
        yield


# ---- pre-cast frozen linear weights (see docs/precision.md, "Pre-casting the frozen weights") --
# Under autocast every matmul re-casts its fp32 weight to the compute dtype on every call: the
# autocast weight cache only holds leaf tensors that require grad, and inference weights often do
# not. ``lowp_weights`` swaps cached low-precision copies of the frozen ``nn.Linear`` weights in for
# the duration of a call. Autocast runs ``F.linear`` on operands cast with the same
# round-to-nearest cast, so the result is bit-identical and the casts happen once.
#
# Only ``nn.Linear``: a convolution's weight dtype is also read by model code, not only by the
# conv. transformers' DINOv3 casts the pixels to the patch-embedding conv's weight dtype
# (``pixel_values.to(self.embeddings.patch_embeddings.weight.dtype)``) and then builds its RoPE
# cos/sin tables in the pixels' dtype, so a bf16 conv weight puts the rotary tables in bf16, where
# plain autocast keeps them fp32: measured up to 6.8e-3 off plain autocast on the tiny DINOv3 test
# model, mostly in CLS. Convolutions keep their fp32 weights and autocast casts them per call.
_LOWP_MODULES = (torch.nn.Linear,)
_CACHE_ATTR = "_sam2_vitplug_lowp_cache"
_precast_state = {"enabled": True}
_swap_lock = threading.Lock()
# (module id, dtype) -> (users, fp32 originals, keep the copies after the last user leaves)
_swapped: dict[tuple[int, str], tuple[int, list, bool]] = {}


def precast_enabled() -> bool:
    """Whether :func:`lowp_weights` swaps in cached copies (True unless switched off, e.g. by a
    benchmark measuring what pre-casting saves)."""
    return _precast_state["enabled"]


@contextlib.contextmanager
def precast(enabled: bool) -> Iterator[None]:
    """Switch :func:`lowp_weights` on or off inside the block (benchmarks: autocast alone vs
    autocast with pre-cast weights)."""
    before = _precast_state["enabled"]
    _precast_state["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _precast_state["enabled"] = before


def _lowp_targets(module: torch.nn.Module, grad: bool) -> list[tuple[torch.nn.Module, str, torch.Tensor]]:
    """``(submodule, parameter name, fp32 tensor)`` for every Linear weight and bias of ``module``
    that is frozen here: ``requires_grad`` False, or any weight while grad mode is off
    (inference: no gradient can flow to it, and inference models usually keep
    ``requires_grad`` True)."""
    out = []
    for sub in module.modules():
        if not isinstance(sub, _LOWP_MODULES):
            continue
        for name in ("weight", "bias"):
            p = sub._parameters.get(name)
            if p is None or p.dtype != torch.float32 or (p.requires_grad and grad):
                continue
            out.append((sub, name, p))
    return out


def lowp_bytes(module: torch.nn.Module | None, dtype: str | torch.dtype | None, *, grad: bool | None = None) -> int:
    """Bytes of the ``dtype`` copies :func:`lowp_weights` would make for ``module`` (0 for fp32,
    ``None`` or with :func:`precast` off): memory plans count them. ``grad`` defaults to the
    current grad mode (trainable weights are not copied while it is on)."""
    name = parse_dtype(dtype)
    if name == "fp32" or module is None or not precast_enabled():
        return 0
    grad = torch.is_grad_enabled() if grad is None else grad
    elem = torch.finfo(DTYPES[name]).bits // 8
    return sum(p.numel() * elem for _, _, p in _lowp_targets(module, grad))


def drop_lowp_weights(module: torch.nn.Module) -> None:
    """Free the low-precision copies cached on ``module`` (a caller done with reduced
    precision); the next :func:`lowp_weights` call casts again. Copies in use stay alive until
    their call ends."""
    module.__dict__.pop(_CACHE_ATTR, None)


def _lowp_copies(module: torch.nn.Module, dtype: torch.dtype) -> list[tuple[torch.nn.Module, str, torch.Tensor]]:
    """``(submodule, parameter name, low-precision copy)`` for :func:`_lowp_targets`. Cached on
    ``module`` for one dtype (a call in another dtype replaces the copies, so switching dtypes
    never holds two sets) and re-cast when a weight was changed in place (its version counter or
    storage moved), so a loaded checkpoint is never shadowed."""
    cache = module.__dict__.setdefault(_CACHE_ATTR, {})
    entries = cache.get(dtype)
    fresh = _lowp_targets(module, torch.is_grad_enabled())
    stamps = [(id(sub), name, p.data_ptr(), p._version, p.device) for sub, name, p in fresh]
    if entries is not None and entries[0] == stamps:
        return entries[1]
    out = []
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors: usable in and out of inference mode
        for sub, name, p in fresh:
            out.append((sub, name, p.detach().to(dtype)))
    cache.clear()
    cache[dtype] = (stamps, out)
    return out


@contextlib.contextmanager
def lowp_weights(module: torch.nn.Module | None, dtype: str | torch.dtype | None, *,
                 keep: bool = True) -> Iterator[None]:
    """Run ``module`` with ``dtype`` copies of its frozen ``nn.Linear`` weights and biases (use
    inside :func:`autocast`; bit-identical to autocast's own casts); a no-op for fp32, for
    ``module=None`` and when :func:`precast` is off. With grad enabled, weights that require grad
    keep their fp32 originals (training sees them). Convolutions, norms and other parameters stay
    fp32: transformers' DINOv3 casts its pixels to the patch-embedding conv's weight dtype (and
    its RoPE tables to the pixels'), so a pre-cast conv would change its numbers (comment above).

    Costs one low-precision copy of those weights (half their fp32 size for bf16/fp16). With
    ``keep=True`` (default) the copies stay cached on the module for the next call (one dtype at
    a time); ``keep=False`` drops them when the last user leaves, so they exist only during the
    call (what a per-call memory plan counts: ``HRFeatureExtractor``). Nested and concurrent
    calls in the same dtype share one swap (the last to leave restores the originals; any
    ``keep=False`` among them drops the copies); an fp32 call on ``module`` from another thread
    during the swap would see the copies, so do not mix dtypes on one model across threads."""
    name = parse_dtype(dtype)
    if name == "fp32" or module is None or not precast_enabled():
        yield
        return
    key = (id(module), name)
    with _swap_lock:
        count, originals, keeps = _swapped.get(key, (0, None, True))
        if count == 0:  # first entrant swaps; nested or concurrent same-dtype calls share the swap
            copies = _lowp_copies(module, DTYPES[name])
            originals = [(sub, pname, sub._parameters[pname]) for sub, pname, _ in copies]
            for sub, pname, copy in copies:
                sub._parameters[pname] = copy
        _swapped[key] = (count + 1, originals, keeps and keep)
    try:
        yield
    finally:
        with _swap_lock:
            count, originals, keeps = _swapped.pop(key)
            if count > 1:
                _swapped[key] = (count - 1, originals, keeps)
            else:  # the last one out restores the fp32 originals
                for sub, pname, original in originals:
                    sub._parameters[pname] = original
                if not keeps:
                    drop_lowp_weights(module)


@contextlib.contextmanager
def compute_in(dtype: str | torch.dtype | None, device: str | torch.device,
               module: torch.nn.Module | None = None) -> Iterator[None]:
    """Run ``module`` (the model about to be called) in ``dtype``: :func:`autocast` plus its
    pre-cast frozen Linear weights (:func:`lowp_weights`); nothing at all for fp32."""
    with autocast(dtype, device), lowp_weights(module, dtype):
        yield
