#!/usr/bin/env python
"""Benchmark the few-shot proposal stage: upstream's decoder path vs the exact fast path vs adaptive prompting.

For each SAM2 model (random weights, upstream ``sam2.1_hiera_{t,l}`` at 1024 px by default) and
one random 640x480 target image, in ONE run:

* the proposal stage (``SAM2Proposals``: image encoder + 32x32 point-grid decoding, best of 3
  masks by predicted IoU, ``iou_thr``) with ``engine=upstream``, ``engine=fast`` and
  ``engine=fast`` + adaptive prompting: seconds by stage, peak memory of the stage (VmHWM reset
  around it, minus the RSS before it), decoded prompts and kept proposals;
* equal work: the fast engine decoding every prompt's 3 masks (``predict_points``) against the
  upstream decoding time, and their max differences on the first prompts (masks, IoUs, object
  logits);
* the arithmetic floor: FLOPs of the decoder work for all grid prompts, counted with
  ``torch.utils.flop_counter.FlopCounterMode`` for upstream's execution and for the fast one,
  and the seconds they take at this machine's measured matmul throughput.

``--sweep`` times the fast engine at several sub-batch sizes (how ``SUB_BATCH_BYTES`` was chosen).
Random weights: masks are meaningless, so ``kept`` and adaptive's prompt count say nothing about
real images (``tools/proposal_recall.py`` measures recall with a trained model). Times on a
shared machine are noisy; ratios within one run are what count, and the load is recorded.

    HF_HUB_OFFLINE=1 python tools/bench_proposals.py --out bench_out/proposals.json
    HF_HUB_OFFLINE=1 python tools/bench_proposals.py --quick --out /tmp/quick.json
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine_info, print_table, timed, write_json_atomic  # noqa: E402
from benchmem import MemProbe  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)

MODELS = {"t": "configs/sam2.1/sam2.1_hiera_t.yaml", "s": "configs/sam2.1/sam2.1_hiera_s.yaml",
          "b+": "configs/sam2.1/sam2.1_hiera_b+.yaml", "l": "configs/sam2.1/sam2.1_hiera_l.yaml"}
MODES = ("fast", "upstream", "adaptive")


def matmul_gflops(threads: int) -> dict[str, float]:
    """Best float32 matmul throughput of this machine now (the floor's yardstick), two shapes."""
    out = {}
    for name, (b, m, k, n) in {"mm_1024": (1, 1024, 1024, 1024), "bmm_decoder": (8, 64, 256, 4096)}.items():
        x, y = torch.randn(b, m, k), torch.randn(b, k, n)
        torch.bmm(x, y)
        best = min(timed(lambda: torch.bmm(x, y))[1] for _ in range(5))
        out[name] = 2 * b * m * k * n / best / 1e9
    out["threads"] = threads
    return out


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def upstream_decode(model: torch.nn.Module, feats: dict, points: torch.Tensor, multimask: bool = True):
    """Upstream ``MaskDecoder`` on ``points (B, 2)`` (model input pixels), as ``SAM2Proposals`` calls it."""
    penc = model.sam_prompt_encoder
    labels = torch.ones(points.shape[0], 1, dtype=torch.int)
    sparse, dense = penc(points=(points[:, None], labels), boxes=None, masks=None)
    high_res = [f[-1:] for f in feats["high_res_feats"]]
    return model.sam_mask_decoder(image_embeddings=feats["image_embed"][-1:], image_pe=penc.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                  multimask_output=multimask, repeat_image=True, high_res_features=high_res or None)


def bench_model(key: str, config: str, args: argparse.Namespace, image: np.ndarray, first: bool) -> dict[str, Any]:
    from sam2_vitplug.build import build_sam2_vit
    from sam2_vitplug.matching.adaptive import AdaptiveConfig
    from sam2_vitplug.matching.decoder_engine import FastMaskDecoder
    from sam2_vitplug.matching.proposals import SAM2Proposals, point_grid

    torch.manual_seed(0)
    model = build_sam2_vit(config, None, device="cpu", hydra_overrides_extra=args.sam2_override)
    n_points = args.points_per_side ** 2
    report: dict[str, Any] = {"config": config, "image_size": int(model.image_size), "points": n_points, "modes": {}}
    sources = {
        "fast": SAM2Proposals(model, points_per_side=args.points_per_side, points_batch=args.points_batch,
                              iou_thr=args.iou_thr, engine="fast"),
        "upstream": SAM2Proposals(model, points_per_side=args.points_per_side, points_batch=args.points_batch,
                                  iou_thr=args.iou_thr, engine="upstream"),
        "adaptive": SAM2Proposals(model, points_per_side=args.points_per_side, points_batch=args.points_batch,
                                  iou_thr=args.iou_thr, engine="fast",
                                  adaptive=AdaptiveConfig(start=args.adaptive_start)),
    }
    # warm-up: the image encoder once (first-call allocations), not the decoders (upstream is minutes)
    sources["fast"].predictor.set_image(image)
    probe = MemProbe(torch.device("cpu"), True)
    order = [m for m in MODES if m in args.modes]
    for rep in range(args.repeats):
        for mode in (order if rep % 2 == 0 else order[::-1]):
            print(f"[{key}] {mode} proposals ...", file=sys.stderr, flush=True)
            probe.start()
            props, wall, cpu = timed(lambda: sources[mode](image, 1))
            mem = probe.stop()
            src = sources[mode]
            row = report["modes"].setdefault(mode, {"runs": []})
            row["runs"].append({"total_s": wall, "cpu_s": cpu, **src.timings, **src.stats,
                                "peak_mib": mem.get("peak_mib"), "memory_method": mem.get("method")})
            del props
    for row in report["modes"].values():
        runs = row["runs"]
        for field in ("total_s", "cpu_s", "sam2_encoder", "prompt_decoding", "peak_mib", "decoded_prompts", "kept"):
            vals = [r[field] for r in runs if r.get(field) is not None]
            row[field] = float(np.median(vals)) if vals else None

    # equal work and parity: every prompt's 3 masks, fast engine vs upstream
    pred = sources["fast"].predictor
    pred.set_image(image)
    feats = pred._features
    grid = torch.from_numpy(point_grid(args.points_per_side, *image.shape[:2]))
    points = pred._transforms.transform_coords(grid, normalize=True, orig_hw=image.shape[:2])
    engine = FastMaskDecoder(model)
    high_res = [f[-1:] for f in feats["high_res_feats"]] or None
    labels = torch.ones(n_points, 1, dtype=torch.int)
    with torch.inference_mode():
        ctx, prep_s, _ = timed(lambda: engine.prepare(feats["image_embed"][-1:], high_res))
        if "fast" in args.modes:
            probe.start()
            _, all_s, all_cpu = timed(lambda: engine.predict_points(ctx, points[:, None], labels, True))
            all_mem = probe.stop()
            report["fast_all_masks"] = {"seconds": all_s + prep_s, "cpu_s": all_cpu, "prepare_s": prep_s,
                                        "peak_mib": all_mem.get("peak_mib")}
        k = min(args.parity_prompts, n_points)
        up_masks, up_iou, _, up_obj = upstream_decode(model, feats, points[:k])
        out = engine.predict_points(ctx, points[:k, None], labels[:k], True)
        scale = float(up_masks.abs().max())
        report["parity"] = {"prompts": k, "masks_max_abs": float((out.masks - up_masks).abs().max()),
                            "masks_scale": scale, "iou_max_abs": float((out.iou - up_iou).abs().max()),
                            "obj_max_abs": float((out.object_score_logits - up_obj).abs().max())}
        report["parity"]["masks_max_rel"] = report["parity"]["masks_max_abs"] / max(scale, 1e-12)
        # FLOPs: linear in prompts (plus the fast engine's once-per-image prepare)
        f = min(args.flop_prompts, n_points)
        up_flops = count_flops(lambda: upstream_decode(model, feats, points[:f])) / f * n_points
        prep_flops = count_flops(lambda: engine.prepare(feats["image_embed"][-1:], high_res))
        fast_flops = count_flops(lambda: engine.predict_points(ctx, points[:f, None], labels[:f], True)) / f * n_points
    report["flops"] = {"upstream": up_flops, "fast": fast_flops + prep_flops, "fast_prepare": prep_flops,
                       "prompts": n_points, "counted_on_prompts": f}
    if args.sweep and first:  # the decoders of all hiera sizes have the same shapes: sweep once
        report["sweep"] = sweep(model, ctx, points, args)
    return report


def sweep(model: torch.nn.Module, ctx: Any, points: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """ms per prompt of the fast engine (all 3 masks) per sub-batch size, interleaved rounds."""
    from sam2_vitplug.matching.decoder_engine import FastMaskDecoder

    sizes = [int(s) for s in args.sweep.split(",")]
    k = min(len(points), args.sweep_prompts)
    labels = torch.ones(k, 1, dtype=torch.int)
    wall: dict[int, list[float]] = {s: [] for s in sizes}
    cpu: dict[int, list[float]] = {s: [] for s in sizes}
    with torch.inference_mode():
        for rnd in range(2):
            for s in (sizes if rnd == 0 else sizes[::-1]):
                engine = FastMaskDecoder(model, sub_batch=s)
                _, w, c = timed(lambda: engine.predict_points(ctx, points[:k, None], labels, True))
                wall[s].append(1000 * w / k)
                cpu[s].append(1000 * c / k)
    return {"prompts": k, "ms_per_prompt_wall": {s: float(np.median(v)) for s, v in wall.items()},
            "ms_per_prompt_cpu": {s: float(np.median(v)) for s, v in cpu.items()}}


def summarise(report: dict[str, Any]) -> None:
    peak = report["matmul_gflops"]["mm_1024"]
    for m in report["models"].values():
        modes = m["modes"]
        up = modes.get("upstream")
        s: dict[str, Any] = {}
        for name, row in modes.items():
            if up and row.get("total_s"):
                s[f"{name}_stage_speedup"] = up["total_s"] / row["total_s"]
                s[f"{name}_decoding_speedup"] = up["prompt_decoding"] / row["prompt_decoding"]
        if up and "fast_all_masks" in m:
            s["fast_equal_work_speedup"] = up["prompt_decoding"] / m["fast_all_masks"]["seconds"]
        fl = m["flops"]
        s["upstream_floor_s"] = fl["upstream"] / (peak * 1e9)
        s["fast_floor_s"] = fl["fast"] / (peak * 1e9)
        s["flop_ratio_upstream_over_fast"] = fl["upstream"] / fl["fast"]
        if "fast_all_masks" in m:
            s["fast_over_its_floor"] = m["fast_all_masks"]["seconds"] / s["fast_floor_s"]
            s["fast_over_upstream_floor"] = m["fast_all_masks"]["seconds"] / s["upstream_floor_s"]
        m["summary"] = s


def print_report(report: dict[str, Any]) -> None:
    header = ["model", "mode", "encoder s", "decoding s", "stage s", "x upstream", "peak MiB", "decoded", "kept"]
    rows = []
    for key, m in report["models"].items():
        for mode, r in m["modes"].items():
            sp = m["summary"].get(f"{mode}_stage_speedup")
            rows.append([key, mode, f"{r['sam2_encoder']:.2f}", f"{r['prompt_decoding']:.2f}", f"{r['total_s']:.2f}",
                         "-" if sp is None else f"{sp:.2f}", "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}",
                         f"{r['decoded_prompts']:.0f}", f"{r['kept']:.0f}"])
    print_table(header, rows)
    print(f"\nload average {report['loadavg_start']} -> {report['loadavg_end']}, {report['torch_threads']} torch "
          f"threads, {os.cpu_count()} CPUs; matmul {report['matmul_gflops']['mm_1024']:.1f} GFLOP/s")
    for key, m in report["models"].items():
        s, p, fl = m["summary"], m["parity"], m["flops"]
        line = f"[{key}] parity on {p['prompts']} prompts: masks max|d| {p['masks_max_abs']:.2e} (scale " \
               f"{p['masks_scale']:.1f}, rel {p['masks_max_rel']:.1e}), IoU {p['iou_max_abs']:.1e}, obj " \
               f"{p['obj_max_abs']:.1e}"
        print(line)
        print(f"[{key}] FLOPs for {fl['prompts']} prompts: upstream {fl['upstream'] / 1e12:.2f} T, fast "
              f"{fl['fast'] / 1e12:.2f} T ({s['flop_ratio_upstream_over_fast']:.2f}x fewer); floor at measured matmul "
              f"speed: upstream {s['upstream_floor_s']:.1f} s, fast {s['fast_floor_s']:.1f} s")
        if "fast_all_masks" in m:
            eq = s.get("fast_equal_work_speedup")
            print(f"[{key}] fast engine, every prompt's 3 masks: {m['fast_all_masks']['seconds']:.1f} s = "
                  f"{s['fast_over_its_floor']:.2f}x its floor"
                  + ("" if eq is None else f", {eq:.2f}x faster than upstream's decoding (equal work)"))
        if "sweep" in m:
            sw = m["sweep"]["ms_per_prompt_cpu"]
            print(f"[{key}] sub-batch sweep (CPU ms/prompt): " + ", ".join(f"{k}: {v:.1f}" for k, v in sw.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="t,l", help=f"comma list of {', '.join(MODELS)} or config paths")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of fast, upstream, adaptive")
    parser.add_argument("--sam2-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for every model (e.g. ++model.image_size=256)")
    parser.add_argument("--height", type=int, default=480, help="target image height")
    parser.add_argument("--width", type=int, default=640, help="target image width")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-batch", type=int, default=64, help="prompts per decoder call (config default)")
    parser.add_argument("--iou-thr", type=float, default=0.4)
    parser.add_argument("--adaptive-start", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="timed proposal-stage runs per mode")
    parser.add_argument("--parity-prompts", type=int, default=64)
    parser.add_argument("--flop-prompts", type=int, default=16, help="prompts the FLOP count runs on (scaled up)")
    parser.add_argument("--sweep", default="", help="fast-engine sub-batch sizes to time, e.g. 1,2,4,8,16")
    parser.add_argument("--sweep-prompts", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: hiera-t at 256 px, 8x8 points, 96x128 image, 4-prompt FLOP count")
    parser.add_argument("--out", required=True, help="JSON output")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.points_per_side, args.height, args.width = "t", 8, 96, 128
        args.flop_prompts, args.parity_prompts, args.sweep_prompts = 4, 8, 16
        if not any("image_size" in o for o in args.sam2_override):
            args.sam2_override = [*args.sam2_override, "++model.image_size=256"]
        args.adaptive_start = 2
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        raise ValueError(f"--modes {bad} unknown; choose from {', '.join(MODES)}")
    if "fast" not in args.modes:
        args.modes.append("fast")  # the equal-work and parity rows need the fast source
    if args.points_per_side < 1 or args.height < 1 or args.width < 1:
        raise ValueError("--points-per-side, --height and --width must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    image = (rng.random((args.height, args.width, 3)) * 255).astype(np.uint8)
    report: dict[str, Any] = {"args": {k: v for k, v in vars(args).items()}, "torch_threads": torch.get_num_threads(),
                              "cpu_count": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
                              "machine": machine_info("cpu"), "models": {}}
    report["matmul_gflops"] = matmul_gflops(torch.get_num_threads())
    for i, key in enumerate(k.strip() for k in args.models.split(",") if k.strip()):
        config = MODELS.get(key, key)
        report["models"][key] = bench_model(key, config, args, image, first=i == 0)
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summarise(report)
    print_report(report)
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
