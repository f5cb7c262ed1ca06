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
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from bench_trunk_parts.measure import autocast_ctx, memory_cell_main, run_memory_subprocesses, time_once  # noqa: E402
from bench_trunk_parts.models import (  # noqa: E402
    DEFAULT_VARIANT, DTYPES, HIERA_CONFIGS, VIT_PRESETS, Cell, ViTBench, build_hiera_encoder, count_params,
    resize_like_trunk)
from bench_trunk_parts.ops import profile_pyramid_ops  # noqa: E402
from bench_trunk_parts.report import build_rows, build_summary, print_ops, print_table, print_target  # noqa: E402
# machine_info and write_json_atomic are also imported from here by tools/hr_probe.py
from benchlib import loadavg, machine_info, median, write_json_atomic  # noqa: E402
from benchmem import MEM_METHODS, MemProbe  # noqa: E402

log = logging.getLogger("bench_trunk")


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
        info["loadavg_now"] = loadavg()
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
            rounds_log.append({"round": rnd + 1, "end_s": time.perf_counter() - t_start, "loadavg": loadavg()})
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
    print_target(data["summary"]["target"])
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
