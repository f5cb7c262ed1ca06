"""The op profile: a load-robust estimate of the trunk's overhead and which pyramid op costs most."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any, Callable

import torch
from benchlib import sync, timed

from .models import DEFAULT_VARIANT, ViTBench, resize_like_trunk, tokens_to_map, variant_name


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
        timed(pieces[name], device)
    for rnd in range(repeats):
        for name in names if rnd % 2 == 0 else names[::-1]:
            _, w, c = timed(pieces[name], device)
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
