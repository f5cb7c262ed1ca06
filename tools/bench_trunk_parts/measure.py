"""Timing one forward with its memory, and the fresh-process memory cells."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from benchlib import timed
from benchmem import MemProbe

from .models import (DEFAULT_VARIANT, DTYPES, VIT_PRESETS, Cell, build_hiera_encoder, build_neck,
                     resize_like_trunk)

log = logging.getLogger("bench_trunk")
TOOL = Path(__file__).resolve().parents[1] / "bench_trunk.py"


def autocast_ctx(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def time_once(fn: Callable[[], Any], device: torch.device, probe: MemProbe) -> tuple[float, dict[str, Any]]:
    """Wall seconds of ``fn()`` and its memory probe; ``mem['cpu_util']`` is this process's CPU time over
    (wall x torch threads): well below 1 on CPU means other processes competed for the cores."""
    probe.start()
    out, elapsed, cpu = timed(fn, device)
    mem = probe.stop()
    mem["cpu_s"] = cpu
    # CPU utilisation only says something about competing load when the work runs on the CPU
    mem["cpu_util"] = cpu / (elapsed * torch.get_num_threads()) if elapsed > 0 and device.type == "cpu" else None
    del out
    return elapsed, mem


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
            [sys.executable, str(TOOL), "--_mem-cell", json.dumps(spec)],
            capture_output=True, text=True, env=env, timeout=args.memory_timeout,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            log.warning("memory subprocess failed for %s %s: %s", cell.model, cell.variant, proc.stderr[-2000:])
            cell.mem = {"peak_mib": None, "method": "subprocess-failed", "error": proc.stderr[-500:]}
            continue
        cell.mem = json.loads(lines[-1])
        cell.mem["method"] = "subprocess/" + cell.mem.get("method", "?")
