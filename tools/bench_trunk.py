#!/usr/bin/env python
"""Benchmark ``ViTTrunkMultiScale`` against the raw ViT forward and upstream SAM2 Hiera.

All models use random weights of real-size geometry (``dinov2_{small,base,large}`` presets with
``random_init=True``; Hiera built from upstream ``sam2.1_hiera_*.yaml``), so nothing is
downloaded. For every ViT size and image size it times, in ONE run:

* ``raw_vit``: ``trunk.vit(pixel_values=x_resized)`` at the size the trunk feeds the ViT
  (``trunk.vit_input_size(H, W)``: 896 px for patch 14 at 1024 px);
* ``trunk:<upsample>[+refine]``: the full trunk ``trunk(x)`` (input resize + ViT + pyramid) for
  ``bilinear``/``deconv`` with and without ``refine_highres``; the four variants share ONE ViT
  module (their pyramids are swapped into ``trunk.pyramid`` before each forward);
* ``encoder:bilinear+refine``: ``ViTImageEncoder`` (trunk + ``ViTFpnNeck``, scalp 1);
* ``hiera_<t|s|b+|l>``: upstream Hiera trunk (``model.image_encoder`` of the upstream config,
  instantiated with hydra) at the image size itself.

Repetitions are interleaved: every round runs every cell once (alternating forward and reverse
order), so slow drift of the machine hits all variants equally. Each cell reports the median
of ``--repeats`` rounds after one warm-up round, its ratio to the raw ViT forward of the same
ViT/image size (overhead = ratio - 1), the per-round paired ratio, its parameters and its peak
memory. The JSON also holds each forward's process CPU time and CPU utilisation: on a shared
machine other processes stretch wall-clock times by tens of percent, far more than the 5% being
measured, so a cell whose median utilisation is below 90% is flagged as disturbed.

The op profile (``--op-repeats``, on by default) gives a direct, load-robust estimate of the
overhead: the ViT's pieces (embeddings, one block, final norm) and the trunk's extra work (input
resize, each pyramid, the neck) are timed alternately in short calls, and
``overhead_interleaved = (resize + pyramid) / (embeddings + num_layers * block + norm)``. A
forward-hook pass then attributes the pyramid's time to its modules (which op costs most).
``summary.target`` judges the 5% target on the end-to-end overhead when those timings were clean
and on the interleaved estimate otherwise (``basis`` says which). ``--repeats 0`` skips the
end-to-end timings and runs only the op profile.

Peak memory (``--memory``):
  * ``subprocess`` (CPU default): each cell in a fresh process; after building the model the
    kernel's peak-RSS counter is reset (``/proc/self/clear_refs`` = 5) and the peak RSS increase
    of ONE forward is ``VmHWM - VmRSS(before)``; ``ru_maxrss`` after-before is recorded too
    (it is only a lower bound when building the model peaked higher than the forward).
  * ``inprocess``: the same VmHWM reset around every timed forward of this process (after
    ``malloc_trim``); the reported value is the max over the timed repetitions. Free, but the
    allocator may reuse memory kept from earlier forwards, so it can read a little low.
  * CUDA: ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the forward.

Examples::

    HF_HUB_OFFLINE=1 python tools/bench_trunk.py --quick --out bench_out/quick.json
    HF_HUB_OFFLINE=1 python tools/bench_trunk.py --sizes L --image-sizes 1024,512 \\
        --out bench_out/bench_trunk_L.json
    python tools/bench_trunk.py --device cuda --dtype bf16 --out bench_out/cuda_bf16.json
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import gc
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

log = logging.getLogger("bench_trunk")

VIT_PRESETS = {"S": "dinov2_small", "B": "dinov2_base", "L": "dinov2_large"}
HIERA_CONFIGS = {
    "t": "sam2.1_hiera_t.yaml",
    "s": "sam2.1_hiera_s.yaml",
    "b+": "sam2.1_hiera_b+.yaml",
    "l": "sam2.1_hiera_l.yaml",
}
TRUNK_VARIANTS = (("bilinear", True), ("bilinear", False), ("deconv", True), ("deconv", False))
DEFAULT_VARIANT = ("bilinear", True)  # the trunk's default configuration, also used by the encoder
TARGET_MAX_OVERHEAD = 0.05
TARGET_VIT = "L"
TARGET_IMAGE_SIZE = 1024
TARGET_TEXT = (
    "pyramid and refinement add at most 5% to the raw ViT forward time at 1024 px for ViT-L geometry"
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MEM_METHODS = {
    "subprocess": (
        "fresh subprocess per cell, one forward (no warm-up) after building the model; peak = VmHWM after the "
        "forward - VmRSS before it, with VmHWM reset via /proc/self/clear_refs=5 after building (ru_maxrss "
        "after-before kept as 'ru_maxrss_delta_mib', a lower bound if building peaked higher)"
    ),
    "inprocess": (
        "in this process around every timed forward: malloc_trim, VmHWM reset via /proc/self/clear_refs=5, "
        "peak = VmHWM after - VmRSS before; reported value = max over the timed repeats (may read low if the "
        "allocator reuses memory kept from earlier forwards)"
    ),
    "cuda": "torch.cuda.max_memory_allocated() after the forward - torch.cuda.memory_allocated() before it "
    "(reset_peak_memory_stats before each timed forward); max over the timed repeats",
    "off": "not measured",
}


def variant_name(upsample_mode: str, refine: bool, prefix: str = "trunk") -> str:
    return f"{prefix}:{upsample_mode}{'+refine' if refine else ''}"


# ---------------------------------------------------------------------------------------------
# memory probes
# ---------------------------------------------------------------------------------------------
def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024


def _ru_maxrss_kib() -> float:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / 1024 if sys.platform == "darwin" else float(value)


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:  # noqa: BLE001 - not glibc
        pass


class MemProbe:
    """Peak memory increase of one forward (MiB), on CPU (RSS) or CUDA (allocator)."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.device = device
        self.enabled = enabled
        self._state: dict[str, Any] = {}

    def start(self) -> None:
        if not self.enabled:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._state = {"base": torch.cuda.memory_allocated(self.device)}
            return
        gc.collect()
        _malloc_trim()
        ru0 = _ru_maxrss_kib()
        rss0 = _status_kib("VmRSS")
        self._state = {"ru0": ru0, "rss0": rss0, "hwm_ok": _reset_peak_rss()}

    def stop(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._state["base"]
            return {"peak_mib": peak / 2**20, "method": "cuda"}
        ru1 = _ru_maxrss_kib()
        out: dict[str, Any] = {"ru_maxrss_delta_mib": max(0.0, ru1 - self._state["ru0"]) / 1024}
        hwm = _status_kib("VmHWM")
        if self._state["hwm_ok"] and hwm is not None and self._state["rss0"] is not None:
            out.update(peak_mib=(hwm - self._state["rss0"]) / 1024, method="VmHWM-reset")
        else:
            out.update(peak_mib=out["ru_maxrss_delta_mib"], method="ru_maxrss")
        return out


# ---------------------------------------------------------------------------------------------
# models and cells
# ---------------------------------------------------------------------------------------------
def count_params(*modules: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def build_neck(channel_list: list[int]) -> torch.nn.Module:
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    from sam2_vitplug.modeling import ViTFpnNeck

    return ViTFpnNeck(
        position_encoding=PositionEmbeddingSine(num_pos_feats=256, normalize=True, temperature=10000),
        d_model=256,
        backbone_channel_list=list(channel_list),
        fpn_top_down_levels=[2, 3],
        fpn_interp_model="nearest",
    )


def build_hiera_encoder(key: str) -> torch.nn.Module:
    """Upstream ``model.image_encoder`` (Hiera trunk + FpnNeck) from the installed sam2 config."""
    import hydra
    import sam2
    from omegaconf import OmegaConf

    path = Path(sam2.__file__).resolve().parent / "configs" / "sam2.1" / HIERA_CONFIGS[key]
    cfg = OmegaConf.load(path)
    return hydra.utils.instantiate(cfg.model.image_encoder)


def resize_like_trunk(trunk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input resize ``ViTTrunkMultiScale.forward_vit_maps`` applies before the ViT."""
    height, width = x.shape[-2:]
    size = trunk.vit_input_size(height, width)
    if size == (height, width):
        return x
    shrink = size[0] < height or size[1] < width
    return F.interpolate(
        x, size=size, mode="bilinear", align_corners=False, antialias=trunk.resize_antialias and shrink
    )


def tokens_to_map(trunk: torch.nn.Module, tokens: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """Same view the trunk makes of the ViT tokens (non-contiguous, like the real forward)."""
    batch, count, dim = tokens.shape
    return tokens[:, count - gh * gw :].transpose(1, 2).reshape(batch, dim, gh, gw)


@dataclass
class Cell:
    model: str
    vit: str | None
    image_size: int
    variant: str
    params: int
    fn: Callable[[], Any]
    setup: Callable[[], None] = lambda: None
    warm: Callable[[], Any] | None = None
    vit_input_size: list[int] | None = None
    upsample_mode: str | None = None
    refine_highres: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    cpu_util: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    mems: list[dict[str, Any]] = field(default_factory=list)
    mem: dict[str, Any] | None = None

    @property
    def group(self) -> tuple[str | None, int]:
        return (self.vit, self.image_size)


class ViTBench:
    """One ViT size: one ViT module shared by the four trunk variants and the encoder."""

    def __init__(self, size_key: str, device: torch.device) -> None:
        from sam2_vitplug.modeling import MultiScalePyramid, ViTImageEncoder, ViTTrunkMultiScale

        self.size_key = size_key
        self.preset = VIT_PRESETS[size_key]
        up, refine = DEFAULT_VARIANT
        self.trunk = ViTTrunkMultiScale(self.preset, random_init=True, upsample_mode=up, refine_highres=refine)
        self.pyramids = {DEFAULT_VARIANT: self.trunk.pyramid}
        for mode, ref in TRUNK_VARIANTS:
            if (mode, ref) not in self.pyramids:
                self.pyramids[(mode, ref)] = MultiScalePyramid(
                    self.trunk.embed_dim, self.trunk.channel_list, mode, ref
                )
        self.neck = build_neck(self.trunk.channel_list)
        self.encoder = ViTImageEncoder(trunk=self.trunk, neck=self.neck, scalp=1)
        self.encoder.eval().to(device)
        for pyr in self.pyramids.values():
            pyr.eval().to(device)
        self.forward_kwargs = dict(self.trunk.family.forward_kwargs)
        self.vit_params = count_params(self.trunk.vit)
        self._maps: dict[int, list[torch.Tensor]] = {}

    def use(self, variant: tuple[str, bool]) -> None:
        self.trunk.pyramid = self.pyramids[variant]
        self.trunk.upsample_mode = variant[0]

    def raw(self, x_resized: torch.Tensor) -> Any:
        return self.trunk.vit(pixel_values=x_resized, **self.forward_kwargs)

    def maps_from(self, image_size: int, out: Any) -> list[torch.Tensor]:
        g = image_size // 16
        last = self.trunk.num_layers - 1
        if any(layer != last for layer in self.trunk.feature_layers):
            raise NotImplementedError("shared warm-up assumes the default feature_layers (last layer)")
        m = tokens_to_map(self.trunk, out.last_hidden_state, g, g)
        self._maps[image_size] = [m] * 4
        return self._maps[image_size]

    def cells(self, image_size: int, x: torch.Tensor, x_resized: torch.Tensor) -> list[Cell]:
        trunk = self.trunk
        vit_size = list(x_resized.shape[-2:])
        common = dict(model=self.preset, vit=self.size_key, image_size=image_size, vit_input_size=vit_size)

        def warm_raw() -> None:
            self.maps_from(image_size, self.raw(x_resized))

        cells = [
            Cell(variant="raw_vit", params=self.vit_params, fn=lambda: self.raw(x_resized), warm=warm_raw,
                 **common)
        ]
        for mode, refine in TRUNK_VARIANTS:
            pyr = self.pyramids[(mode, refine)]

            def warm_trunk(pyr: torch.nn.Module = pyr) -> None:
                resize_like_trunk(trunk, x)
                pyr(self._maps[image_size])

            cells.append(
                Cell(
                    variant=variant_name(mode, refine),
                    params=self.vit_params + count_params(pyr),
                    fn=lambda: trunk(x),
                    setup=lambda v=(mode, refine): self.use(v),
                    warm=warm_trunk,
                    upsample_mode=mode,
                    refine_highres=refine,
                    **common,
                )
            )

        def warm_encoder() -> None:
            resize_like_trunk(trunk, x)
            self.neck(self.pyramids[DEFAULT_VARIANT](self._maps[image_size]))

        cells.append(
            Cell(
                variant=variant_name(*DEFAULT_VARIANT, prefix="encoder"),
                params=count_params(self.encoder),
                fn=lambda: self.encoder(x),
                setup=lambda: self.use(DEFAULT_VARIANT),
                warm=warm_encoder,
                upsample_mode=DEFAULT_VARIANT[0],
                refine_highres=DEFAULT_VARIANT[1],
                **common,
            )
        )
        return cells


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_ctx(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def time_once(fn: Callable[[], Any], device: torch.device, probe: MemProbe) -> tuple[float, dict[str, Any]]:
    """Wall seconds of ``fn()`` and its memory probe; ``mem['cpu_util']`` is this process's CPU time over
    (wall x torch threads): well below 1 on CPU means other processes competed for the cores."""
    probe.start()
    sync(device)
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    mem = probe.stop()
    mem["cpu_s"] = cpu
    # CPU utilisation only says something about competing load when the work runs on the CPU
    mem["cpu_util"] = cpu / (elapsed * torch.get_num_threads()) if elapsed > 0 and device.type == "cpu" else None
    del out
    return elapsed, mem


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _call_timer(device: torch.device) -> Callable[[Callable[[], Any]], tuple[float, float]]:
    def run(fn: Callable[[], Any]) -> tuple[float, float]:
        sync(device)
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0, time.process_time() - c0

    return run


def profile_pyramid_ops(bench: ViTBench, image_size: int, x: torch.Tensor, raw_s: float | None,
                        repeats: int, device: torch.device) -> dict[str, Any]:
    """Low-noise direct estimate of the trunk overhead, and which pyramid op costs most.

    1. Interleaved pass: the ViT's pieces (embeddings, ONE transformer block, final norm) and the
       trunk's extra work (input resize, each pyramid variant, the neck) are timed alternately,
       ``repeats`` rounds of short calls, so load changes on the machine hit numerator and
       denominator alike. ``vit_estimate_s = embeddings + num_layers * block + final_norm``
       (all blocks have the same cost); ``overhead_interleaved = (resize + pyramid) /
       vit_estimate_s`` (``+ neck`` for the encoder). The pyramid is fed random tokens laid out
       exactly like the ViT output (a non-contiguous view), so its cost is that of the real forward.
    2. Hook pass: per-module times of every pyramid variant (forward pre/post hooks);
       ``self_s`` is a module's time minus its direct children's (e.g. the bilinear interpolation
       inside ``BilinearUp``, the residual add of the refinement).
    """
    trunk = bench.trunk
    timer = _call_timer(device)
    g = image_size // 16
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(1, trunk.num_prefix_tokens + g * g, trunk.embed_dim, generator=gen).to(device)
    maps = [tokens_to_map(trunk, tokens, g, g)] * 4
    x_res = resize_like_trunk(trunk, x)
    blocks = trunk.family.blocks(trunk.vit)
    block = blocks[len(blocks) // 2]
    norm = trunk.family.final_norm(trunk.vit)
    hidden = trunk.vit.embeddings(x_res)
    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    neck_in = bench.pyramids[DEFAULT_VARIANT](maps)

    pieces: dict[str, Callable[[], Any]] = {
        "vit.embeddings": lambda: trunk.vit.embeddings(x_res),
        "vit.block": lambda: block(hidden),
        "vit.final_norm": lambda: norm(hidden),
        "resize": lambda: resize_like_trunk(trunk, x),
    }
    for variant, pyr in bench.pyramids.items():
        pieces["pyramid:" + variant_name(*variant)] = lambda pyr=pyr: pyr(maps)
    pieces["neck"] = lambda: bench.neck(neck_in)
    wall: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    names = list(pieces)
    for name in names:  # warm-up
        timer(pieces[name])
    for rnd in range(repeats):
        for name in names if rnd % 2 == 0 else names[::-1]:
            w, c = timer(pieces[name])
            wall[name].append(w)
            cpu[name].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    n = len(blocks)
    vit_est = med["vit.embeddings"] + n * med["vit.block"] + med["vit.final_norm"]
    vit_est_cpu = med_cpu["vit.embeddings"] + n * med_cpu["vit.block"] + med_cpu["vit.final_norm"]
    resize_s = med["resize"]
    result: dict[str, Any] = {
        "vit": bench.size_key, "model": bench.preset, "image_size": image_size, "repeats": repeats,
        "raw_vit_median_s": raw_s, "num_layers": n, "vit_estimate_s": vit_est, "vit_estimate_cpu_s": vit_est_cpu,
        "vit_estimate_vs_raw": vit_est / raw_s if raw_s else None, "resize_s": resize_s,
        "interleaved": {"median_s": med, "median_cpu_s": med_cpu, "times_s": dict(wall)}, "variants": {},
    }
    for (mode, refine), pyr in bench.pyramids.items():
        vname = variant_name(mode, refine)
        starts: dict[str, float] = {}
        times: dict[str, list[float]] = defaultdict(list)
        handles = []
        for name, module in pyr.named_modules():
            name = name or "pyramid"

            def pre(_m, _i, name=name):
                sync(device)
                starts[name] = time.perf_counter()

            def post(_m, _i, _o, name=name):
                sync(device)
                times[name].append(time.perf_counter() - starts[name])

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        try:
            pyr(maps)  # warm
            times.clear()
            for _ in range(repeats):
                pyr(maps)
        finally:
            for h in handles:
                h.remove()
        hook_med = {name: statistics.median(v) for name, v in times.items()}
        modules = dict(pyr.named_modules())
        ops = []
        for name, t in hook_med.items():
            module = modules["" if name == "pyramid" else name]
            prefix = "" if name == "pyramid" else name + "."
            children = [c for c in hook_med if c != "pyramid" and c != name and c.startswith(prefix)
                        and "." not in c[len(prefix):]]
            self_s = max(0.0, t - sum(hook_med[c] for c in children))
            ops.append({"module": name, "type": type(module).__name__, "median_s": t, "self_s": self_s,
                        "self_frac_of_vit": self_s / vit_est,
                        "self_frac_of_raw": self_s / raw_s if raw_s else None})
        pyramid_s = med["pyramid:" + vname]
        pyramid_cpu = med_cpu["pyramid:" + vname]
        entry = {
            "pyramid_s": pyramid_s, "pyramid_cpu_s": pyramid_cpu, "head_s": resize_s + pyramid_s,
            "overhead_interleaved": (resize_s + pyramid_s) / vit_est,
            "overhead_interleaved_cpu": (med_cpu["resize"] + pyramid_cpu) / vit_est_cpu,
            "overhead_vs_raw_median": (resize_s + pyramid_s) / raw_s if raw_s else None,
            "hook_pass_pyramid_s": hook_med["pyramid"],
            "ops": sorted(ops, key=lambda o: -o["self_s"]),
        }
        if (mode, refine) == DEFAULT_VARIANT:
            entry["neck_s"] = med["neck"]
            entry["encoder_overhead_interleaved"] = (resize_s + pyramid_s + med["neck"]) / vit_est
            entry["encoder_overhead_interleaved_cpu"] = (
                med_cpu["resize"] + pyramid_cpu + med_cpu["neck"]) / vit_est_cpu
        result["variants"][vname] = entry
    return result


# ---------------------------------------------------------------------------------------------
# memory in a fresh subprocess
# ---------------------------------------------------------------------------------------------
def memory_cell_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Build only what one cell needs, then measure the peak RSS increase of ONE forward."""
    device = torch.device(spec["device"])
    dtype = DTYPES[spec["dtype"]]
    size = int(spec["image_size"])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=gen).to(device)
    variant = spec["variant"]
    if spec.get("vit"):
        from sam2_vitplug.modeling import ViTImageEncoder, ViTTrunkMultiScale

        mode = spec.get("upsample_mode") or DEFAULT_VARIANT[0]
        refine = DEFAULT_VARIANT[1] if spec.get("refine_highres") is None else bool(spec["refine_highres"])
        trunk = ViTTrunkMultiScale(VIT_PRESETS[spec["vit"]], random_init=True, upsample_mode=mode,
                                   refine_highres=refine)
        if variant == "raw_vit":
            model = trunk.eval().to(device)
            x_res = resize_like_trunk(trunk, x)
            kwargs = dict(trunk.family.forward_kwargs)
            fn = lambda: model.vit(pixel_values=x_res, **kwargs)  # noqa: E731
        elif variant.startswith("encoder"):
            model = ViTImageEncoder(trunk=trunk, neck=build_neck(trunk.channel_list), scalp=1).eval().to(device)
            fn = lambda: model(x)  # noqa: E731
        else:
            model = trunk.eval().to(device)
            fn = lambda: model(x)  # noqa: E731
    else:
        key = spec["hiera"]
        encoder = build_hiera_encoder(key).eval().to(device)
        model = encoder if variant.endswith("encoder") else encoder.trunk
        fn = lambda: model(x)  # noqa: E731
    probe = MemProbe(device, True)
    with torch.inference_mode(), autocast_ctx(device, dtype):
        elapsed, mem = time_once(fn, device, probe)
    mem["forward_s"] = elapsed
    return mem


def run_memory_subprocesses(cells: list[Cell], args: argparse.Namespace) -> None:
    from tqdm import tqdm

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for cell in tqdm(cells, desc="memory (subprocess per cell)", unit="cell", file=sys.stderr):
        spec = {"device": args.device, "dtype": args.dtype, "image_size": cell.image_size, "variant": cell.variant,
                "vit": cell.vit, "hiera": cell.extra.get("hiera"), "upsample_mode": cell.upsample_mode,
                "refine_highres": cell.refine_highres}
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--_mem-cell", json.dumps(spec)],
            capture_output=True, text=True, env=env, timeout=args.memory_timeout,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            log.warning("memory subprocess failed for %s %s: %s", cell.model, cell.variant, proc.stderr[-2000:])
            cell.mem = {"peak_mib": None, "method": "subprocess-failed", "error": proc.stderr[-500:]}
            continue
        cell.mem = json.loads(lines[-1])
        cell.mem["method"] = "subprocess/" + cell.mem.get("method", "?")


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict[str, Any]:
    from importlib import metadata

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "sam2": version("sam2"),
        "sam2_vitplug": version("sam2_vitplug") or version("sam2-vitplug"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model,
        "cpu_model": cpu_model,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mem_total_gib": (_meminfo_kib("MemTotal") or 0) / 2**20,
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def _meminfo_kib(name: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


CLEAN_CPU_UTIL = 0.9  # below this median CPU utilisation a cell's wall times were disturbed by other load


def build_rows(cells: list[Cell], mem_mode: str) -> list[dict[str, Any]]:
    raw = {c.group: c for c in cells if c.variant == "raw_vit"}
    rows = []
    for c in cells:
        med = median(c.times)
        med_cpu = median(c.cpu_s)
        ref = raw.get(c.group) if c.vit else None
        ref_med = median(ref.times) if ref else None
        ref_cpu = median(ref.cpu_s) if ref else None
        ratio = med / ref_med if med is not None and ref_med else None
        ref_min = min(ref.times) if ref and ref.times else None
        overhead_min = min(c.times) / ref_min - 1 if ref_min and c.times else None
        paired = None
        if ref is not None and len(ref.times) == len(c.times) and c.times:
            paired = statistics.median(t / r for t, r in zip(c.times, ref.times))
        if mem_mode in ("inprocess", "cuda"):
            peaks = [m["peak_mib"] for m in c.mems if m.get("peak_mib") is not None]
            mem = {"peak_mib": max(peaks) if peaks else None, "per_repeat_mib": peaks,
                   "method": c.mems[0].get("method") if c.mems else None}
        else:
            mem = c.mem or {"peak_mib": None, "method": mem_mode}
        util = median([u for u in c.cpu_util if u is not None])
        rows.append({
            "model": c.model, "vit": c.vit, "image_size": c.image_size, "vit_input_size": c.vit_input_size,
            "variant": c.variant, "upsample_mode": c.upsample_mode, "refine_highres": c.refine_highres,
            "times_s": c.times, "median_s": med, "min_s": min(c.times) if c.times else None,
            "max_s": max(c.times) if c.times else None,
            "ratio_vs_raw": ratio, "overhead": ratio - 1 if ratio is not None else None,
            "ratio_paired_median": paired, "overhead_min": overhead_min,
            "cpu_s": c.cpu_s, "median_cpu_s": med_cpu,
            "overhead_cpu": med_cpu / ref_cpu - 1 if med_cpu is not None and ref_cpu else None,
            "cpu_util": c.cpu_util, "cpu_util_median": util,
            "clean": (util >= CLEAN_CPU_UTIL if util is not None else True) if c.times else None,
            "params_m": c.params / 1e6, "peak_mem_mib": mem.get("peak_mib"), "memory": mem, **c.extra,
        })
    return rows


def _le(value: float | None, limit: float) -> bool | None:
    return value <= limit if value is not None else None


def build_summary(rows: list[dict[str, Any]], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """Per ViT/image size: every variant's overhead vs the raw ViT, and the 5% target verdict.

    ``overhead`` (median trunk / median raw - 1) is the end-to-end number; when the timed
    forwards were disturbed by other load (median CPU utilisation < 90%) the verdict falls
    back to ``overhead_interleaved`` from the op profile (see ``profile_pyramid_ops``).
    """
    ops_by_group = {(o["vit"], o["image_size"]): o for o in ops}
    per_config = []
    target: dict[str, Any] = {"text": TARGET_TEXT, "max_overhead": TARGET_MAX_OVERHEAD, "vit": TARGET_VIT,
                              "image_size": TARGET_IMAGE_SIZE, "headline_variant": variant_name(*DEFAULT_VARIANT),
                              "measured": False}
    groups = sorted({(r["vit"], r["image_size"]) for r in rows if r["vit"]},
                    key=lambda g: (list(VIT_PRESETS).index(g[0]), -g[1]))
    for vit, size in groups:
        raw = next(r for r in rows if r["vit"] == vit and r["image_size"] == size and r["variant"] == "raw_vit")
        prof = ops_by_group.get((vit, size), {})
        variants = {}
        for r in rows:
            if r["vit"] != vit or r["image_size"] != size or r["variant"] == "raw_vit":
                continue
            p = prof.get("variants", {}).get(variant_name(r["upsample_mode"], r["refine_highres"]), {})
            enc = r["variant"].startswith("encoder")
            inter = p.get("encoder_overhead_interleaved" if enc else "overhead_interleaved")
            inter_cpu = p.get("encoder_overhead_interleaved_cpu" if enc else "overhead_interleaved_cpu")
            ov = r["overhead"]
            paired = r["ratio_paired_median"] - 1 if r["ratio_paired_median"] is not None else None
            clean = bool(r["clean"] and raw["clean"])
            basis = "end-to-end" if clean and ov is not None else ("interleaved" if inter is not None else None)
            verdict_value = ov if basis == "end-to-end" else inter
            variants[r["variant"]] = {
                "ratio_vs_raw": r["ratio_vs_raw"], "overhead": ov, "overhead_paired": paired,
                "overhead_min": r["overhead_min"], "overhead_cpu": r["overhead_cpu"],
                "overhead_interleaved": inter, "overhead_interleaved_cpu": inter_cpu,
                "end_to_end_clean": clean,
                "meets_5pct": _le(ov, TARGET_MAX_OVERHEAD),
                "meets_5pct_interleaved": _le(inter, TARGET_MAX_OVERHEAD),
                "verdict_basis": basis, "verdict_overhead": verdict_value,
                "verdict_meets_5pct": _le(verdict_value, TARGET_MAX_OVERHEAD),
            }
        entry = {"vit": vit, "model": raw["model"], "image_size": size, "raw_vit_median_s": raw["median_s"],
                 "raw_vit_cpu_util": raw["cpu_util_median"], "vit_estimate_s": prof.get("vit_estimate_s"),
                 "variants": variants}
        per_config.append(entry)
        if vit == TARGET_VIT and size == TARGET_IMAGE_SIZE:
            trunk_variants = {k: v for k, v in variants.items() if k.startswith("trunk:")}
            head = trunk_variants.get(target["headline_variant"], {})
            target.update(
                measured=True,
                met=head.get("verdict_meets_5pct"),
                basis=head.get("verdict_basis"),
                headline_overhead=head.get("verdict_overhead"),
                per_variant=trunk_variants,
            )
    hiera = defaultdict(dict)
    for r in rows:
        if r["vit"] is None:
            raws = {rr["vit"]: rr["median_s"] for rr in rows
                    if rr["variant"] == "raw_vit" and rr["image_size"] == r["image_size"]}
            hiera[str(r["image_size"])][r["model"] + "/" + r["variant"]] = {
                "median_s": r["median_s"],
                "vs_raw_vit": {k: r["median_s"] / v for k, v in raws.items() if v and r["median_s"]},
            }
    return {"target": target, "per_config": per_config, "hiera": dict(hiera)}


def fmt(value: Any, spec: str, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    return format(value, spec).rjust(width)


def print_table(rows: list[dict[str, Any]], ops: list[dict[str, Any]], out=sys.stdout) -> None:
    inter = {}
    for o in ops:
        for name, v in o["variants"].items():
            inter[(o["vit"], o["image_size"], name)] = v["overhead_interleaved"]
            if "encoder_overhead_interleaved" in v:
                inter[(o["vit"], o["image_size"], "encoder:" + name.split(":", 1)[1])] = v[
                    "encoder_overhead_interleaved"]
    header = (f"{'model':<14} {'img':>5} {'vit in':>7} {'variant':<24} {'median s':>9} {'min s':>8} {'max s':>8} "
              f"{'x raw':>7} {'overhead':>9} {'paired':>8} {'min-ovh':>8} {'cpu-ovh':>8} {'interlv':>8} "
              f"{'params M':>9} {'peak MiB':>9} {'cpu':>5}")
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in rows:
        vit_in = f"{r['vit_input_size'][0]}" if r["vit_input_size"] else "-"
        paired = r["ratio_paired_median"] - 1 if r["ratio_paired_median"] is not None else None
        is_raw = r["variant"] == "raw_vit"
        print(
            f"{r['model']:<14} {r['image_size']:>5} {vit_in:>7} {r['variant']:<24} "
            f"{fmt(r['median_s'], '.3f', 9)} {fmt(r['min_s'], '.3f', 8)} {fmt(r['max_s'], '.3f', 8)} "
            f"{fmt(r['ratio_vs_raw'], '.3f', 7)} "
            f"{fmt(None if is_raw else r['overhead'], '+.2%', 9)} "
            f"{fmt(None if is_raw else paired, '+.2%', 8)} "
            f"{fmt(None if is_raw else r['overhead_min'], '+.2%', 8)} "
            f"{fmt(None if is_raw else r['overhead_cpu'], '+.2%', 8)} "
            f"{fmt(inter.get((r['vit'], r['image_size'], r['variant'])), '+.2%', 8)} "
            f"{fmt(r['params_m'], '.2f', 9)} {fmt(r['peak_mem_mib'], '.1f', 9)} "
            f"{fmt(r['cpu_util_median'], '.0%', 5)}",
            file=out,
        )
    print("overhead = median/median(raw) - 1; paired = median over rounds of (t/t_raw) - 1; min-ovh = min/min(raw) - 1;"
          " cpu-ovh = same with process CPU seconds; interlv = (resize + pyramid [+ neck]) / ViT estimate, timed "
          "interleaved in short calls (robust to other load); cpu = median CPU utilisation of the timed forwards "
          f"(< {CLEAN_CPU_UTIL:.0%}: other processes competed, wall-clock columns unreliable)", file=out)


def print_ops(ops: list[dict[str, Any]], top: int, out=sys.stdout) -> None:
    for o in ops:
        est = o["vit_estimate_s"]
        raw = o["raw_vit_median_s"]
        im = o["interleaved"]["median_s"]
        raw_txt = f"{raw:.3f} s" if raw else "-"
        print(f"\npyramid op profile {o['model']} @ {o['image_size']} px (median of {o['repeats']} interleaved "
              f"rounds): ViT estimate {est:.3f} s = embeddings {im['vit.embeddings'] * 1e3:.1f} ms + "
              f"{o['num_layers']} x block {im['vit.block'] * 1e3:.1f} ms + norm {im['vit.final_norm'] * 1e3:.1f} ms "
              f"(raw ViT median in the timed rounds: {raw_txt}); input resize {o['resize_s'] * 1e3:.1f} ms", file=out)
        for name, v in o["variants"].items():
            neck = (f"; neck {v['neck_s'] * 1e3:.1f} ms, encoder overhead {v['encoder_overhead_interleaved']:+.2%}"
                    if "neck_s" in v else "")
            print(f"  {name:<22} pyramid {v['pyramid_s'] * 1e3:8.1f} ms -> resize+pyramid = "
                  f"{v['overhead_interleaved']:+.2%} of ViT (cpu-time {v['overhead_interleaved_cpu']:+.2%}){neck}",
                  file=out)
            for op in v["ops"][:top]:
                if op["self_s"] < 1e-4:
                    continue
                print(f"      {op['module']:<18} {op['type']:<26} self {op['self_s'] * 1e3:8.1f} ms "
                      f"({op['self_frac_of_vit']:.2%} of ViT)  total {op['median_s'] * 1e3:8.1f} ms", file=out)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def parse_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None, help="ViT sizes, comma separated: S,B,L (default all)")
    p.add_argument("--image-sizes", default=None, help="image sizes in px, multiples of 16 (default 1024,512)")
    p.add_argument("--hiera", default=None, help="upstream Hiera sizes: t,s,b+,l or 'none' (default t,b+,l)")
    p.add_argument("--hiera-variants", default="trunk",
                   help="what to time for Hiera: trunk and/or encoder (trunk + FpnNeck), default trunk")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds per cell (default 3; median reported); 0 skips the end-to-end timings and "
                        "runs only the pyramid op profile (and subprocess memory)")
    p.add_argument("--warmup", choices=("full", "shared"), default="full",
                   help="full: one full forward of every cell before timing; shared: one full forward of each "
                        "distinct network (ViT, Hiera) plus the resize/pyramid/neck heads of every variant at the "
                        "same shapes (every op runs once, much cheaper for big ViTs on CPU)")
    p.add_argument("--op-repeats", type=int, default=None,
                   help="repeats of the per-module pyramid profile (default 5, 0 disables)")
    p.add_argument("--memory", nargs="?", const="auto", default="auto",
                   choices=("auto", "subprocess", "inprocess", "off"),
                   help="peak memory: subprocess (fresh process per cell), inprocess, off; auto = subprocess on "
                        "CPU (inprocess with --quick), allocator stats on CUDA")
    p.add_argument("--no-memory", dest="memory", action="store_const", const="off", help="same as --memory off")
    p.add_argument("--memory-timeout", type=float, default=3600, help="seconds per memory subprocess")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="autocast dtype (fp32: no autocast)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: --sizes S --image-sizes 256 --hiera t --repeats 1 --op-repeats 1 "
                        "(explicit flags still win)")
    p.add_argument("--out", default="bench_out/bench_trunk.json", help="JSON output path (written atomically)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_mem-cell", dest="mem_cell", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = {"sizes": "S", "image_sizes": "256", "hiera": "t", "repeats": 1, "op_repeats": 1}
    full = {"sizes": "S,B,L", "image_sizes": "1024,512", "hiera": "t,b+,l", "repeats": 3, "op_repeats": 5}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.size_list = [s.upper() for s in parse_list(args.sizes)]
    for s in args.size_list:
        if s not in VIT_PRESETS:
            p.error(f"--sizes: unknown ViT size {s!r}; use S, B, L")
    args.image_size_list = [int(s) for s in parse_list(args.image_sizes)]
    for s in args.image_size_list:
        if s <= 0 or s % 16:
            p.error(f"--image-sizes: {s} is not a positive multiple of 16")
    args.hiera_list = [] if args.hiera.lower() in ("none", "") else [h.lower() for h in parse_list(args.hiera)]
    for h in args.hiera_list:
        if h not in HIERA_CONFIGS:
            p.error(f"--hiera: unknown size {h!r}; use {','.join(HIERA_CONFIGS)}")
    args.hiera_variant_list = parse_list(args.hiera_variants)
    if not set(args.hiera_variant_list) <= {"trunk", "encoder"}:
        p.error("--hiera-variants takes trunk and/or encoder")
    if args.repeats < 0:
        p.error("--repeats must be >= 0 (0: skip the end-to-end timings, profile only)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("sam2_vitplug").setLevel(logging.WARNING)
    if args.mem_cell is not None:
        print(json.dumps(memory_cell_main(json.loads(args.mem_cell))))
        return 0

    from tqdm import tqdm

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.error("--device %s requested but CUDA is not available", args.device)
        return 2
    if device.type not in ("cpu", "cuda"):
        log.error("--device must be cpu or cuda[:N], got %s", args.device)
        return 2
    dtype = DTYPES[args.dtype]
    mem_mode = args.memory
    if mem_mode != "off" and device.type == "cuda":
        mem_mode = "cuda"
    elif mem_mode == "auto":
        mem_mode = "inprocess" if args.quick else "subprocess"
    torch.manual_seed(args.seed)
    out_path = Path(args.out)
    info = machine_info(device)
    arguments = {k: v for k, v in vars(args).items() if k != "mem_cell"}
    log.info("bench_trunk: device %s (%s), %d torch threads, %s cpus, dtype %s, memory %s",
             device, info["device_name"], info["torch_num_threads"], info["cpu_count"], args.dtype, mem_mode)

    t_build = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    images = {s: torch.randn(1, 3, s, s, generator=gen).to(device) for s in args.image_size_list}
    cells: list[Cell] = []
    benches: dict[str, ViTBench] = {}
    for key in args.size_list:
        log.info("building %s (random weights)", VIT_PRESETS[key])
        bench = benches[key] = ViTBench(key, device)
        for size in args.image_size_list:
            x = images[size]
            cells += bench.cells(size, x, resize_like_trunk(bench.trunk, x))
    hieras = {}
    for key in args.hiera_list:
        log.info("building Hiera %s from upstream %s", key, HIERA_CONFIGS[key])
        enc = hieras[key] = build_hiera_encoder(key).eval().to(device)
        for size in args.image_size_list:
            x = images[size]
            for hv in args.hiera_variant_list:
                model = enc.trunk if hv == "trunk" else enc
                cells.append(Cell(model=f"hiera_{key}", vit=None, image_size=size, variant=f"hiera:{hv}",
                                  params=count_params(model), fn=lambda m=model, x=x: m(x),
                                  extra={"hiera": key, "config": HIERA_CONFIGS[key],
                                         "hiera_trunk_params_m": count_params(enc.trunk) / 1e6,
                                         "hiera_encoder_params_m": count_params(enc) / 1e6}))
    build_s = time.perf_counter() - t_build
    log.info("built %d cells in %.1f s", len(cells), build_s)

    probe = MemProbe(device, mem_mode in ("inprocess", "cuda"))
    no_probe = MemProbe(device, False)
    ops: list[dict[str, Any]] = []

    def snapshot(status: str, rounds_done: int) -> dict[str, Any]:
        rows = build_rows(cells, mem_mode)
        info["loadavg_now"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        return {"status": status, "rounds_done": rounds_done, "machine": info, "arguments": arguments,
                "timing": {"repeats": args.repeats, "warmup": args.warmup, "statistic": "median",
                           "interleaved": "every round runs every cell once, alternating forward/reverse order",
                           "batch": 1, "dtype": args.dtype, "grad": "torch.inference_mode", "build_s": build_s,
                           "rounds": rounds_log},
                "memory_method": {"mode": mem_mode, "description": MEM_METHODS[mem_mode]},
                "rows": rows, "pyramid_ops": ops, "summary": build_summary(rows, ops)}

    rounds_log: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    total = len(cells) * (1 + args.repeats) if args.repeats else 0
    with torch.inference_mode(), autocast_ctx(device, dtype):
        bar = tqdm(total=total, desc="warm-up", unit="fwd", file=sys.stderr, dynamic_ncols=True,
                   disable=not args.repeats)
        for cell in cells if args.repeats else []:
            bar.set_postfix_str(f"{cell.model}@{cell.image_size} {cell.variant}")
            cell.setup()
            warm = cell.fn if args.warmup == "full" or cell.warm is None else cell.warm
            time_once(warm, device, no_probe)
            bar.update(1)
        for rnd in range(args.repeats):
            bar.set_description(f"round {rnd + 1}/{args.repeats}")
            order = cells if rnd % 2 == 0 else cells[::-1]
            for cell in order:
                bar.set_postfix_str(f"{cell.model}@{cell.image_size} {cell.variant}")
                cell.setup()
                elapsed, mem = time_once(cell.fn, device, probe)
                cell.times.append(elapsed)
                cell.cpu_util.append(mem.pop("cpu_util"))
                cell.cpu_s.append(mem.pop("cpu_s"))
                if mem:
                    cell.mems.append(mem)
                bar.update(1)
            bar.write(f"round {rnd + 1}/{args.repeats} done at {time.perf_counter() - t_start:.0f} s: " + ", ".join(
                f"{c.model.replace('dinov2_', '')}@{c.image_size} {c.variant} {c.times[-1]:.2f}s" for c in cells))
            rounds_log.append({"round": rnd + 1, "end_s": time.perf_counter() - t_start,
                               "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None})
            write_json_atomic(out_path, snapshot("running", rnd + 1))
        bar.close()
        if args.op_repeats > 0:
            for key, bench in benches.items():
                for size in args.image_size_list:
                    raw_cell = next(c for c in cells if c.vit == key and c.image_size == size
                                    and c.variant == "raw_vit")
                    log.info("profiling pyramid ops %s @ %d", bench.preset, size)
                    ops.append(profile_pyramid_ops(bench, size, images[size], median(raw_cell.times),
                                                   args.op_repeats, device))
            for bench in benches.values():
                bench.use(DEFAULT_VARIANT)
    if mem_mode == "subprocess":
        del benches, hieras, images
        for cell in cells:
            cell.fn = cell.setup = cell.warm = None  # type: ignore[assignment]
        gc.collect()
        run_memory_subprocesses(cells, args)

    data = snapshot("complete", args.repeats)
    data["machine"]["elapsed_s"] = time.perf_counter() - t_start + build_s
    write_json_atomic(out_path, data)

    print()
    print_table(data["rows"], ops)
    print_ops(ops, top=8)
    print(f"\nmemory: {mem_mode}: {MEM_METHODS[mem_mode]}")
    target = data["summary"]["target"]
    print(f"target: {TARGET_TEXT}")
    if target["measured"]:
        def pct(value: float | None) -> str:
            return f"{value:+.2%}" if value is not None else "-"

        for name, v in target["per_variant"].items():
            verdict = {True: "MEETS", False: "MISSES", None: "?"}[v["verdict_meets_5pct"]]
            print(f"  {name:<24} end-to-end {pct(v['overhead'])} (paired {pct(v['overhead_paired'])}, "
                  f"{'clean' if v['end_to_end_clean'] else 'DISTURBED by other load'}); interleaved "
                  f"{pct(v['overhead_interleaved'])} -> {verdict} 5% (basis: {v['verdict_basis']})")
        met = {True: "MET", False: "NOT MET", None: "UNKNOWN"}[target["met"]]
        print(f"  headline {target['headline_variant']}: {met} ({pct(target['headline_overhead'])}, "
              f"basis: {target['basis']})")
    else:
        print(f"  not measured in this run (needs --sizes {TARGET_VIT} and --image-sizes {TARGET_IMAGE_SIZE})")
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
