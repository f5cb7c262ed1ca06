#!/usr/bin/env python
"""Benchmark transform-averaged (HR) features: time and peak memory against K and image size.

For every ViT geometry (``dinov2_{small,base,large}`` presets, random weights, nothing
downloaded) and every image size (the ViT input: 448, 896, 1344 px = 32, 64, 96 tokens a
side), ONE run measures:

* ``bilinear``: one plain ViT forward + ``F.interpolate`` to the target (the baseline);
* ``tavg K`` for each K: ``HRFeatureExtractor(transforms=K)`` (transforms, one batched ViT
  forward of the K images, upsample + invert + average). Its ViT call is timed inside the same
  run: that call IS a plain batched forward of K images (same shapes, same tokens), so
  ``x plainK = total / vit`` is the cost of K transforms relative to K plain forwards (batched).
  The largest K runs under a memory budget that allows ``--budget-chunk`` images per forward,
  to show memory follows the budget (``peak <= budget``) while the smaller K run unchunked;
* ``stride/2``: patch-embedding stride P/2 (4x tokens), K=1, geometry-correct bilinear
  upsampling; its cost relative to ``bilinear`` is reported as measured.

The target is ``image / --target-stride`` (4 = SAM2's stride-4 level; 1 = full resolution).
Ratios are within one run; ``x plainK`` is within one call, so load from other processes
cannot skew it. Ratios between calls (``x bil``) are stretched by such load; ``cpu x bil``
uses process CPU time instead and ``util`` (CPU time / wall time / threads) shows how much of
a core the call got. Peak memory: this process's VmHWM reset before each call
(``/proc/self/clear_refs``), peak = VmHWM after - VmRSS before (output included); the
planner's estimate is recorded beside it.

Compute dtype: ``--dtype fp32,bf16`` runs every cell once per dtype in the same process
(``HRFeatureExtractor(dtype=...)``: the ViT under autocast, its linear weights pre-cast once
per call, the averaging in fp32). Each reduced-precision row carries ``x_fp32`` (its time over
the fp32 row of the same cell) and the agreement of its output with fp32's: max and mean
absolute difference, the max relative to the largest fp32 value, and the cosine similarity of
the C-dimensional feature vectors (mean and min over positions). The largest K is also timed
with pre-casting off (``tavgK_noprecast``, ``precision.precast(False)``: autocast re-casts the
frozen weights every forward)
and with the whole ViT cast to the low dtype instead of autocast (``tavgK_model_cast``: norms,
residual stream and position tables in bf16 too, averaging still fp32).
``--models T`` is a tiny DINOv2 (hidden 32, 4 blocks, the test fixtures' geometry).

Depth: ``--depth N`` keeps N transformer blocks (default 1) so that ViT-L at 1344 px with
K=16 finishes on a CPU. The ViT then costs 12-24x less than the full model while the
averaging cost is unchanged, so the measured ``x plainK`` overheads are upper bounds; the JSON
also has ``x_plainK_full_depth_est`` (ViT time scaled by blocks/N). Peak memory in inference
does not depend on depth (one block's activations are alive at a time).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python tools/bench_hr_features.py --out bench_out/hr_features.json
    python tools/bench_hr_features.py --quick --out /tmp/hr_quick.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import fmt, machine_info, print_table, timed, write_json_atomic  # noqa: E402
from benchmem import MEM_METHODS, MemProbe  # noqa: E402

from sam2_vitplug.precision import DTYPES, precast  # noqa: E402

log = logging.getLogger("bench_hr_features")
PRESETS = {"T": "tiny", "S": "dinov2_small", "B": "dinov2_base", "L": "dinov2_large"}
TARGET_RATIO = 1.1


def build_model(key: str, depth: int):
    from sam2_vitplug.encoders import load_encoder

    torch.manual_seed(0)
    if key == "T":
        import tempfile

        import transformers as T

        with tempfile.TemporaryDirectory(prefix="bench_hr_tiny_") as tmp:
            T.AutoModel.from_config(T.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                                   intermediate_size=64, patch_size=14,
                                                   image_size=518)).save_pretrained(tmp)
            loaded = load_encoder(tmp)
    else:
        loaded = load_encoder(PRESETS[key], random_init=True)
    model = loaded.model.eval()
    full = int(model.config.num_hidden_layers)
    if 0 < depth < full:
        blocks = loaded.family.blocks(model)
        del blocks[depth:]
        model.config.num_hidden_layers = depth
    return model, loaded.family, full


def measure(fn: Callable[[], Any], probe: MemProbe) -> tuple[float, dict[str, Any], Any]:
    gc.collect()
    probe.start()
    out, elapsed, cpu = timed(fn)
    mem = probe.stop()
    mem["cpu_s"] = cpu
    mem["cpu_util"] = cpu / (elapsed * torch.get_num_threads()) if elapsed > 0 else None
    return elapsed, mem, out


def agreement(low: torch.Tensor, full: torch.Tensor) -> dict[str, float]:
    """How far a reduced-precision output is from fp32's (both ``(B, C, H, W)``), in fp32."""
    low, full = low.float(), full.float()
    diff = (low - full).abs()
    cos = F.cosine_similarity(low, full, dim=1)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "rel_max_diff": float(diff.max() / full.abs().max().clamp_min(1e-30)),
            "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


def bench_cell(model, family, full_depth: int, size: int, args: argparse.Namespace, probe: MemProbe,
               key: str, dtype: str = "fp32", outputs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every variant of one (model, size) cell in ``dtype``; each variant's output is kept in
    ``outputs`` (by variant name) when given, for the agreement with fp32."""
    import functools

    import sam2_vitplug.modeling.hr_features as hrf

    HRFeatureExtractor = functools.partial(hrf.HRFeatureExtractor, dtype=dtype)  # noqa: N806

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=gen)
    target = (size // args.target_stride, size // args.target_stride)
    depth = int(model.config.num_hidden_layers)
    scale_full = full_depth / depth
    rows: list[dict[str, Any]] = []
    base = {"model": key, "preset": PRESETS[key], "image_size": size, "target": list(target), "depth": depth,
            "full_depth": full_depth, "hidden": int(model.config.hidden_size), "dtype": dtype}

    def run(variant: str, fn: Callable[[], Any], extra: dict[str, Any], vit_box: list[float] | None = None):
        times, mems, vits = [], [], []
        for _ in range(max(1, args.repeats)):
            if vit_box is not None:
                vit_box.clear()
            elapsed, mem, out = measure(fn, probe)
            if outputs is not None:
                outputs[variant] = out
            del out
            times.append(elapsed)
            mems.append(mem)
            if vit_box is not None:
                vits.append(sum(vit_box))
        best = min(range(len(times)), key=times.__getitem__)
        row = dict(base, variant=variant, seconds=times[best], times_s=times, peak_mib=mems[best].get("peak_mib"),
                   cpu_s=mems[best].get("cpu_s"), cpu_util=mems[best].get("cpu_util"),
                   mem_method=mems[best].get("method"), **extra)
        if vit_box is not None:
            row["vit_s"] = vits[best]
            row["other_s"] = times[best] - vits[best]
        rows.append(row)
        log.info("%s %d %s: %.3fs %s MiB", key, size, variant, times[best], row["peak_mib"])
        return row

    with torch.inference_mode():
        plain = HRFeatureExtractor(model, family, transforms=1)
        fwd_kwargs = dict(family.forward_kwargs)

        def bilinear():
            maps = plain.token_maps(x)
            return F.interpolate(maps, size=target, mode="bilinear", align_corners=False)

        bil = run("bilinear", bilinear, {"transforms": 1, "stride": plain.stride,
                                         "tokens": plain.plan(1, size, size, target).tokens_per_image})
        bil["vit_s"] = None
        ks = sorted(args.ks)
        for k in ks:
            budgeted = k == ks[-1] and len(ks) > 1 and args.budget_chunk > 0 and k > args.budget_chunk
            ext = HRFeatureExtractor(model, family, transforms=k)
            plan = ext.plan(1, size, size, target, grad=False)
            if budgeted:
                budget = plan.fixed_bytes + args.budget_chunk * plan.per_item_bytes
                ext = HRFeatureExtractor(model, family, transforms=k, memory_budget=budget)
                plan = ext.plan(1, size, size, target, grad=False)
            vit_box: list[float] = []
            inner = ext.token_maps

            def timed_maps(xk, inner=inner, box=vit_box):
                out, wall, _ = timed(lambda: inner(xk))
                box.append(wall)
                return out

            ext.token_maps = timed_maps  # bench-only instrumentation: time the ViT calls inside the run
            row = run(f"tavg{k}", lambda ext=ext: ext(x, target), {
                "transforms": k, "stride": ext.stride, "chunk": plan.chunk, "forwards": plan.forwards,
                "budget_mib": None if plan.budget is None else plan.budget / 2**20,
                "estimated_mib": plan.estimated_bytes / 2**20, "tokens": plan.tokens_per_image}, vit_box)
            row["x_plainK"] = row["seconds"] / row["vit_s"] if row["vit_s"] else None
            if dtype != "fp32" and k == ks[-1]:  # bench-only: autocast alone, re-casting the weights every forward
                with precast(False):
                    run(f"tavg{k}_noprecast", lambda ext=ext: ext(x, target), {"transforms": k, "chunk": plan.chunk,
                                                                             "forwards": plan.forwards})
                # the alternative to autocast: the whole ViT cast to the low dtype (norms, residual
                # stream and position tables too), fp32 averaging; fastest, least exact
                cast = copy.deepcopy(model).to(DTYPES[dtype])
                ext_cast = hrf.HRFeatureExtractor(cast, family, transforms=k, memory_budget=ext.memory_budget)
                run(f"tavg{k}_model_cast", lambda ext=ext_cast: ext(x.to(DTYPES[dtype]), target).float(),
                    {"transforms": k, "chunk": plan.chunk, "forwards": plan.forwards})
                del cast, ext_cast
            full_vit = row["vit_s"] * scale_full
            row["x_plainK_full_depth_est"] = (row["other_s"] + full_vit) / full_vit if row["vit_s"] else None
            row["x_bilinear"] = row["seconds"] / bil["seconds"]
            row["x_bilinear_cpu"] = row["cpu_s"] / bil["cpu_s"] if bil["cpu_s"] else None
            row["mem_x_bilinear"] = (row["peak_mib"] / bil["peak_mib"]) if row["peak_mib"] and bil["peak_mib"] else None
            if row["budget_mib"] is not None and row["peak_mib"] is not None:
                row["within_budget"] = row["peak_mib"] <= row["budget_mib"]
        if args.plain_batched_max_size and size <= args.plain_batched_max_size:
            for k in ks:  # independent check that the in-run ViT time is what a plain batched forward costs
                xk = x.expand(k, -1, -1, -1).contiguous()
                row = run(f"plain_x{k}", lambda xk=xk: plain.token_maps(xk) if dtype != "fp32" else
                          model(pixel_values=xk, **fwd_kwargs).last_hidden_state,
                          {"transforms": k, "stride": plain.stride})
                tav = next(r for r in rows if r["variant"] == f"tavg{k}")
                tav["plain_batched_s"] = row["seconds"]
                tav["x_plainK_measured_separately"] = tav["seconds"] / row["seconds"]
        if args.stride_max_size == 0 or size <= args.stride_max_size:
            sr = HRFeatureExtractor(model, family, transforms=1, stride_reduction=True)
            plan = sr.plan(1, size, size, target, grad=False)
            row = run("stride/2", lambda: sr(x, target), {"transforms": 1, "stride": sr.stride,
                                                         "tokens": plan.tokens_per_image,
                                                         "estimated_mib": plan.estimated_bytes / 2**20})
            row["x_bilinear"] = row["seconds"] / bil["seconds"]
            row["x_bilinear_cpu"] = row["cpu_s"] / bil["cpu_s"] if bil["cpu_s"] else None
            row["mem_x_bilinear"] = (row["peak_mib"] / bil["peak_mib"]) if row["peak_mib"] and bil["peak_mib"] else None
    return rows


def warm_up(model, family, dtypes: list[str]) -> None:
    """One untimed call of every code path on a small image (first-call allocations, kernel selection)."""
    from sam2_vitplug.modeling.hr_features import HRFeatureExtractor

    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        for dtype in dtypes:
            for kw in ({"transforms": 1}, {"transforms": 8}, {"transforms": 1, "stride_reduction": True}):
                HRFeatureExtractor(model, family, dtype=dtype, **kw)(x, (56, 56))


def compare_dtypes(cell_rows: dict[str, list[dict[str, Any]]], outputs: dict[str, dict[str, Any]]) -> None:
    """Add ``x_fp32`` (time ratio) and the agreement with fp32 to every reduced-precision row."""
    ref_rows = {r["variant"]: r for r in cell_rows.get("fp32", [])}
    for dtype, rows in cell_rows.items():
        if dtype == "fp32":
            continue
        for row in rows:
            variant = row["variant"]
            ref = ref_rows.get(variant.replace("_noprecast", "").replace("_model_cast", ""))
            if ref is None:
                continue
            row["x_fp32"] = row["seconds"] / ref["seconds"]
            full, low = outputs["fp32"].get(ref["variant"]), outputs[dtype].get(variant)
            if isinstance(full, torch.Tensor) and isinstance(low, torch.Tensor) and full.shape == low.shape:
                row.update(agreement(low, full))


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tav = [r for r in rows if r["variant"].startswith("tavg") and r.get("x_plainK") is not None]
    budgeted = [r for r in rows if r.get("budget_mib") is not None]
    worst = max(tav, key=lambda r: r["x_plainK"]) if tav else None
    worst_full = max(tav, key=lambda r: r["x_plainK_full_depth_est"]) if tav else None
    return {
        "target": f"K transforms cost <= {TARGET_RATIO}x K plain batched forwards",
        "worst_x_plainK": None if worst is None else
        {k: worst[k] for k in ("model", "image_size", "transforms", "x_plainK")},
        "worst_x_plainK_full_depth_est": None if worst_full is None else
        {k: worst_full[k] for k in ("model", "image_size", "transforms", "x_plainK_full_depth_est")},
        "met_at_bench_depth": None if worst is None else worst["x_plainK"] <= TARGET_RATIO,
        "met_full_depth_est": None if worst_full is None else worst_full["x_plainK_full_depth_est"] <= TARGET_RATIO,
        "budget_cells": len(budgeted),
        "budget_respected": all(r.get("within_budget") for r in budgeted) if budgeted else None,
        "dtypes": sorted({r["dtype"] for r in rows}),
        "reduced_vs_fp32": [{k: r.get(k) for k in ("model", "image_size", "variant", "dtype", "seconds", "x_fp32",
                                                   "max_abs_diff", "mean_abs_diff", "rel_max_diff", "cosine_mean",
                                                   "cosine_min")}
                            for r in rows if r.get("x_fp32") is not None],
    }


COLUMNS = (("model", "model", "s"), ("px", "image_size", "d"), ("variant", "variant", "s"), ("dtype", "dtype", "s"),
           ("tokens", "tokens", "d"), ("chunk", "chunk", "d"), ("s", "seconds", ".3f"), ("vit s", "vit_s", ".3f"),
           ("x plainK", "x_plainK", ".3f"), ("x full", "x_plainK_full_depth_est", ".3f"),
           ("x bil", "x_bilinear", ".2f"), ("cpu x bil", "x_bilinear_cpu", ".2f"), ("util", "cpu_util", ".2f"),
           ("peak MiB", "peak_mib", ".1f"), ("est MiB", "estimated_mib", ".1f"), ("budget", "budget_mib", ".1f"),
           ("mem x bil", "mem_x_bilinear", ".2f"), ("x fp32", "x_fp32", ".2f"), ("max |d|", "max_abs_diff", ".2e"),
           ("mean |d|", "mean_abs_diff", ".2e"), ("cos mean", "cosine_mean", ".5f"), ("cos min", "cosine_min", ".4f"))


def print_rows(rows: list[dict[str, Any]]) -> None:
    print_table([c[0] for c in COLUMNS], [[fmt(r.get(key), spec) for _, key, spec in COLUMNS] for r in rows])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ints = lambda s: [int(v) for v in s.split(",") if v.strip()]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON results (written atomically)")
    p.add_argument("--models", default="S,B,L", type=lambda s: [v.strip().upper() for v in s.split(",") if v.strip()])
    p.add_argument("--sizes", default="448,896,1344", type=ints, help="ViT input sizes (multiples of 14)")
    p.add_argument("--ks", default="1,4,8,16", type=ints, help="transform counts")
    p.add_argument("--depth", type=int, default=1, help="transformer blocks kept (0 = all)")
    p.add_argument("--target-stride", type=int, default=4, help="target = image / this (1 = full resolution)")
    p.add_argument("--budget-chunk", type=int, default=4,
                   help="the largest K runs under a budget that fits this many images per forward (0 = off)")
    p.add_argument("--stride-max-size", type=int, default=0, help="skip stride/2 above this size (0 = never skip)")
    p.add_argument("--plain-batched-max-size", type=int, default=448,
                   help="also time separate plain batched forwards of K images up to this size (0 = off)")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per cell (best is reported)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="fp32",
                   help="comma-separated compute dtypes, e.g. bf16: every cell in fp32 (the reference, always run) and "
                        "in each of these, with time ratios and agreement against fp32")
    p.add_argument("--quick", action="store_true", help="smoke run: ViT-S, 224 px, K 1 and 4 (K=4 budgeted)")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.sizes, args.ks, args.plain_batched_max_size = ["S"], [224], [1, 4], 224
        args.budget_chunk = 2
    from sam2_vitplug.precision import check_dtype

    try:
        dtypes = [check_dtype(d, "cpu") for d in args.dtype.split(",") if d.strip()]
    except ValueError as err:
        p.error(str(err))
    args.dtypes = ["fp32"] + [d for d in dict.fromkeys(dtypes) if d != "fp32"]  # fp32: the reference, first
    bad = [m for m in args.models if m not in PRESETS]
    if bad:
        p.error(f"--models must be among {', '.join(PRESETS)}, got {bad}")
    if any(s % 14 or s <= 0 for s in args.sizes):
        p.error(f"--sizes must be positive multiples of 14 (patch), got {args.sizes}")
    if any(s % args.target_stride for s in args.sizes) or args.target_stride < 1:
        p.error(f"--target-stride {args.target_stride} must divide every size {args.sizes}")
    from sam2_vitplug.modeling.transforms import make_transforms

    for k in args.ks:
        try:
            make_transforms(k, 14)
        except ValueError as err:
            p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("sam2_vitplug", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    probe = MemProbe(torch.device("cpu"), True)
    rows: list[dict[str, Any]] = []
    data: dict[str, Any] = {"status": "running", "arguments": vars(args), "machine": machine_info(torch.device("cpu")),
                            "memory_method": {"mode": "inprocess", "text": MEM_METHODS["inprocess"]}, "rows": rows}
    for key in args.models:
        model, family, full = build_model(key, args.depth)
        warm_up(model, family, args.dtypes)
        for size in args.sizes:
            cell_rows: dict[str, list[dict[str, Any]]] = {}
            outputs: dict[str, dict[str, Any]] = {}
            compare = len(args.dtypes) > 1
            for dtype in args.dtypes:
                outputs[dtype] = {}
                cell_rows[dtype] = bench_cell(model, family, full, size, args, probe, key, dtype,
                                              outputs[dtype] if compare else None)
                rows += cell_rows[dtype]
            compare_dtypes(cell_rows, outputs)
            del outputs
            write_json_atomic(out, data)  # partial results survive an interrupted run
        del model
        gc.collect()
    data["status"] = "complete"
    data["summary"] = summarise(rows)
    print_rows(rows)
    s = data["summary"]
    print(f"\n{s['target']}: worst at depth {args.depth}: {s['worst_x_plainK']}; full-depth estimate: "
          f"{s['worst_x_plainK_full_depth_est']}; budget respected in {s['budget_cells']} budgeted cells: "
          f"{s['budget_respected']}")
    write_json_atomic(out, data)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
