#!/usr/bin/env python
"""Benchmark few-shot segmentation at real geometry with random weights.

Per target image, seconds by stage (SAM2 encoder, prompt decoding, matcher encoder, scoring,
merging), peak memory, the few-shot methods side by side (``--method ntt,vitplug``: the
reference's chain with full-resolution merging vs this project's earlier one), the proposal engines side by side (``--engines fast,upstream``, plus
``--adaptive`` for adaptive prompting; decoded prompts per image are reported), and the
shared-backbone speed-up (a SAM2 whose trunk is the DINO ViT
serving scoring too). Also the size of an LVIS-scale bank (1203 classes x 10 shots) against
storing full token maps. Random weights: timings and sizes only, never accuracy.

    python tools/bench_fewshot.py --out bench_fewshot.json            # SAM2 hiera-L 1024 + DINOv2-L/DINOv3-L
    python tools/bench_fewshot.py --points-per-side 16 --images 1 --out quick.json
    python tools/bench_fewshot.py --encoders dinov2_large --shared-config '' --target-hw 480x640 \
        --engines fast,upstream --adaptive --images 1 --warmup 0 --out bench_out/fewshot_engines.json
    python tools/bench_fewshot.py --encoders dinov2_large --shared-config '' --target-hw 480x640 \
        --method ntt,vitplug --images 2 --out bench_out/fewshot_methods.json
    python tools/bench_fewshot.py --encoders dinov2_large --shared-config '' --target-hw 480x640 \
        --dtype fp32,bf16 --precast both --flops --images 1 --out bench_out/fewshot_dtype.json

``--dtype fp32,bf16`` times each compute dtype in the same run (docs/precision.md); ``--precast
both`` adds bf16 under autocast alone (frozen weights re-cast every call) next to the default
pre-cast copies; ``--flops`` counts each heavy stage's FLOPs once (``FlopCounterMode``, fp32: the
same ops run in every dtype) and reports the GFLOP/s each setting reaches against a measured
4096x1024x4096 matmul peak of each dtype.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine_info, print_table, time_repeats, timed, write_json_atomic  # noqa: E402
from benchmem import MemProbe  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

STAGES = ("sam2_encoder", "prompt_decoding", "matcher_encoder", "scoring", "merging", "output")
FLOP_STAGES = ("sam2_encoder", "prompt_decoding", "matcher_encoder")  # the matmul-heavy ones
PEAK_SHAPE = (4096, 1024, 4096)  # M, K, N of the peak matmul


def matmul_peak_gflops(dtype: str, device: str, repeats: int = 5) -> float:
    """GFLOP/s of one ``PEAK_SHAPE`` matmul in ``dtype`` (inputs already in it: the kernel's rate)."""
    from sam2_vitplug.precision import DTYPES

    m, k, n = PEAK_SHAPE
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device, DTYPES[dtype])
    b = torch.randn(k, n, generator=gen).to(device, DTYPES[dtype])
    best = time_repeats(lambda: a @ b, device, warmup=1, repeats=repeats).min_s
    return 2 * m * k * n / best / 1e9


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def stage_flops(predictor, image) -> dict[str, int]:
    """FLOPs of the SAM2 encoder, the prompt decoding and the matcher on one image (fp32 run)."""
    source = predictor.source
    encoder = count_flops(lambda: source.set_image(image))
    holder = {}
    total = count_flops(lambda: holder.setdefault("p", source(image, 0)))
    matcher = count_flops(lambda: predictor.target_features(image, holder["p"]))
    return {"sam2_encoder": encoder, "prompt_decoding": total - encoder, "matcher_encoder": matcher}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def random_bank(matcher, classes: int, shots: int, seed: int = 0, method: str = "ntt"):
    from sam2_vitplug.matching import MemoryBank

    gen = torch.Generator().manual_seed(seed)
    dim = int(matcher.vit.config.hidden_size)
    inst = torch.nn.functional.normalize(torch.randn(classes * shots, dim, generator=gen), dim=1)
    labels = torch.arange(classes).repeat_interleave(shots)
    protos = torch.nn.functional.normalize(inst.view(classes, shots, dim).mean(1), dim=1)
    meta = {"format": "sam2_vitplug.fewshot_bank/1", "encoder": matcher.identity, "input_size": matcher.input_size,
            "method": method}
    return MemoryBank(protos, inst, labels, list(range(1, classes + 1)), [f"c{i}" for i in range(classes)], meta)


def bank_sizes(dim: int, grid: int, classes: int = 1203, shots: int = 10, reference_grid: int = 37) -> dict:
    """Bytes of a saved bank (measured by writing one) vs full token maps (computed): the
    ``reference_grid`` x ``reference_grid`` maps of the issue (37x37, DINOv2 at 518 px, DINOv3 at
    592 px) and the encoder's own ``grid`` at its default input size (32x32 for DINOv3 at 512)."""
    from sam2_vitplug.matching import MemoryBank, save_bank

    inst = torch.zeros(classes * shots, dim)
    bank = MemoryBank(torch.zeros(classes, dim), inst, torch.zeros(classes * shots, dtype=torch.long),
                      list(range(classes)), [f"class_{i}" for i in range(classes)],
                      {"format": "sam2_vitplug.fewshot_bank/1", "encoder": "x", "input_size": grid * 14})
    with tempfile.TemporaryDirectory() as tmp:
        save_bank(bank, Path(tmp) / "bank.safetensors")
        saved = (Path(tmp) / "bank.safetensors").stat().st_size
    token_maps = classes * shots * reference_grid * reference_grid * dim * 4
    native = classes * shots * grid * grid * dim * 4
    return {"classes": classes, "shots": shots, "dim": dim, "bank_bytes": saved, "token_map_bytes": token_maps,
            "ratio": token_maps / saved, "native_grid": grid, "native_token_map_bytes": native,
            "native_ratio": native / saved}


def time_images(predictor, images, device: str, warmup: int) -> dict:
    """Mean seconds per stage over ``images``, and the peak memory increase of one image
    (``peak_image_mib``: VmHWM reset before each image, minus the RSS before it; CUDA: allocator)."""
    probe = MemProbe(torch.device(device), True)
    for image in images[:warmup]:
        predictor.predict(image, 0)
    rows = []
    for i, image in enumerate(images):
        probe.start()
        results, total, _ = timed(lambda: predictor.predict(image, i), device)
        peak = probe.stop().get("peak_mib", float("nan"))
        rows.append({**{k: predictor.timings.get(k, 0.0) for k in STAGES}, "total": total, "detections": len(results),
                     "peak_image_mib": peak})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    mean["peak_image_mib"] = float(max(r["peak_image_mib"] for r in rows))
    mean["merging_share"] = mean["merging"] / mean["total"]
    return mean


def merge_worst_case(n: int, size: int, device: str, repeats: int = 3) -> float:
    """Seconds of soft merging with every one of ``n`` 256 px low-res masks kept (no NMS
    reduction), including the area pooling to the ``size`` merge grid, as the pipeline does."""
    from sam2_vitplug.matching import soft_merge
    from sam2_vitplug.matching.features import masks_to_grid

    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(n, 256, 256, generator=gen).to(device)
    emb, scores = torch.randn(n, 1024, generator=gen).to(device), torch.rand(n, generator=gen).to(device)
    labels = torch.randint(0, 10, (n,), generator=gen).to(device)
    return time_repeats(lambda: soft_merge(masks_to_grid(masks, (size, size)), scores, labels, emb), device,
                        warmup=0, repeats=repeats).min_s


def merge_full_worst_case(n: int, height: int, width: int, classes: int = 10, repeats: int = 2) -> float:
    """Seconds of the ntt merging step (exact IoS on full-resolution masks) for ``n`` masks (the
    reference's 800 cap) of random rectangles covering 1-50% of the image each, in ``classes`` classes."""
    from sam2_vitplug.matching.ntt_ops import semantic_ios

    rng = np.random.default_rng(0)
    masks = torch.zeros(n, height, width, dtype=torch.bool)
    for m in masks:
        h, w = int(height * rng.uniform(0.1, 0.7)), int(width * rng.uniform(0.1, 0.7))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        m[y:y + h, x:x + w] = True
    labels = torch.from_numpy(rng.integers(0, classes, n))
    emb = torch.from_numpy(rng.normal(size=(n, 64)).astype(np.float32))
    return time_repeats(lambda: semantic_ios(masks, labels, emb), warmup=0, repeats=repeats).min_s


def main(argv: list[str] | None = None) -> int:
    from sam2_vitplug.devices import default_device

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--sam2-config", default="configs/sam2.1/sam2.1_hiera_l.yaml")
    parser.add_argument("--shared-config", default="sam2_vit_dino.yaml",
                        help="SAM2 config with a DINO trunk for the shared-backbone comparison ('' to skip)")
    parser.add_argument("--encoders", default="dinov2_large,dinov3_large",
                        help="matcher presets or local model directories (random weights of that architecture)")
    parser.add_argument("--sam2-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for both SAM2 builds (e.g. a tiny trunk in tests)")
    parser.add_argument("--image-size", type=int, default=1024, help="target image side")
    parser.add_argument("--target-hw", default=None, metavar="HxW",
                        help="target image height x width (default: --image-size square), e.g. 480x640")
    parser.add_argument("--engines", default="fast", help="comma list of proposal engines: fast, upstream")
    parser.add_argument("--method", default="ntt", help="comma list of few-shot methods: ntt, vitplug "
                        "(configs/matching/<method>.yaml); each is timed with every engine")
    parser.add_argument("--adaptive", action="store_true", help="also time the fast engine with adaptive prompting")
    parser.add_argument("--adaptive-start", type=int, default=8, help="first grid side of adaptive prompting")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=2, help="timed target images per setting")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--classes", type=int, default=80, help="classes in the random bank used for scoring")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dtype", default="fp32", help="comma list of compute dtypes timed in the same run: "
                        "fp32, bf16, fp16 (docs/precision.md)")
    parser.add_argument("--precast", choices=("on", "off", "both"), default="on",
                        help="reduced dtypes with pre-cast frozen weights (on, the library's way), autocast alone "
                             "(off), or both side by side")
    parser.add_argument("--flops", action="store_true",
                        help="count the heavy stages' FLOPs and measure a matmul peak per dtype (GFLOP/s per stage)")
    parser.add_argument("--flops-from", default=None, metavar="JSON",
                        help="with --flops: take the stage FLOP counts from an earlier report of the same geometry "
                             "(they are deterministic) instead of counting again")
    parser.add_argument("--out", required=True, help="JSON output")
    args = parser.parse_args(argv)
    device = args.device or default_device()
    if args.threads:
        torch.set_num_threads(args.threads)

    from sam2_vitplug.build import build_sam2_vit
    from sam2_vitplug.encoders import LoadedEncoder
    from sam2_vitplug.matching import AdaptiveConfig, FewShotPredictor, Proposals, SAM2Proposals, load_config
    from sam2_vitplug.matching import load_matcher
    from sam2_vitplug.matching.encoder import HFMatcherEncoder

    rng = np.random.default_rng(0)
    if args.target_hw:
        try:
            height, width = (int(v) for v in args.target_hw.lower().split("x"))
        except ValueError:
            raise ValueError(f"--target-hw must look like 480x640, got {args.target_hw!r}") from None
    else:
        height = width = args.image_size
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ("fast", "upstream")]
    if bad or not engines:
        raise ValueError(f"--engines must list fast and/or upstream, got {args.engines!r}")
    from sam2_vitplug.precision import check_dtype, precast

    dtypes = list(dict.fromkeys(check_dtype(d.strip(), device) for d in args.dtype.split(",") if d.strip()))
    if not dtypes:
        raise ValueError(f"--dtype must list fp32, bf16 and/or fp16, got {args.dtype!r}")
    # (label, dtype, pre-cast): fp32 has nothing to pre-cast
    precisions = []
    for d in dtypes:
        if d == "fp32":
            precisions.append(("fp32", d, True))
            continue
        if args.precast in ("on", "both"):
            precisions.append((d, d, True))
        if args.precast in ("off", "both"):
            precisions.append((f"{d}-autocast-only", d, False))
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if not methods or any(m not in ("ntt", "vitplug") for m in methods):
        raise ValueError(f"--method must list ntt and/or vitplug, got {args.method!r}")
    images = [(rng.random((height, width, 3)) * 255).astype(np.uint8)
              for _ in range(max(args.images, args.warmup))]
    cfgs = {m: load_config({"proposals": {"points_per_side": args.points_per_side, "points_batch": args.points_batch}},
                           method=m) for m in methods}
    cfg = cfgs[methods[0]]
    report = {"device": device, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "args": vars(args), "machine": machine_info(device), "settings": {}, "bank": {},
              "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    print(f"building {args.sam2_config} (random weights) on {device} ...", file=sys.stderr)
    torch.manual_seed(0)  # the same random SAM2 weights every run (adaptive prompting depends on its masks)
    sam2 = build_sam2_vit(args.sam2_config, None, device=device, hydra_overrides_extra=args.sam2_override)
    variants = [(e, None) for e in engines] + ([("fast", AdaptiveConfig(start=args.adaptive_start))] if args.adaptive else [])
    sources = {}
    for method in methods:
        for e, a in variants:
            for plabel, dtype, cast in precisions:
                p = cfgs[method].proposals
                sources[(method, f"{e}{'+adaptive' if a else ''}", plabel)] = (SAM2Proposals(
                    sam2, points_per_side=args.points_per_side, points_batch=args.points_batch, iou_thr=p.iou_thr,
                    engine=e, adaptive=a, grid=str(p.grid), target_resize=str(p.target_resize),
                    no_mem_embed=bool(p.no_mem_embed), iou_strict=bool(p.iou_strict), dtype=dtype), dtype, cast)
    if args.flops:
        report["matmul_peak_shape"] = list(PEAK_SHAPE)
        report["matmul_peak_gflops"] = {d: matmul_peak_gflops(d, device) for d in dtypes}
        print("matmul peak " + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in report["matmul_peak_gflops"].items()),
              file=sys.stderr)
    for name in [e for e in args.encoders.split(",") if e]:
        matcher = load_matcher(name, device=device, random_init=True)
        banks = {m: random_bank(matcher, args.classes, 10, method=m) for m in methods}
        # first-call costs of both image encoders (allocations, kernels) stay out of every setting
        first = next(iter(sources.values()))[0]
        first.predictor.set_image(images[0])
        FewShotPredictor(banks[methods[0]], first, matcher, cfg).target_features(
            images[0], Proposals(torch.zeros(0, 1, 1), torch.zeros(0, 4), torch.zeros(0), images[0].shape[:2],
                                 lambda idx: None))
        counted: dict[str, dict[str, int]] = {}
        if args.flops and args.flops_from:
            import json

            counted.update(json.loads(Path(args.flops_from).read_text()).get("stage_flops", {}))
        for (method, label, plabel), (source, dtype, cast) in sources.items():
            matcher.compute_dtype = dtype  # the same ViT weights in every dtype (pre-cast copies are cached)
            predictor = FewShotPredictor(banks[method], source, matcher, cfgs[method])
            base = f"{Path(args.sam2_config).stem}+{name}" + (f":{label}" if len(variants) > 1 else "") \
                + (f":{method}" if len(methods) > 1 else "")
            key = base + (f":{plabel}" if len(precisions) > 1 else "")
            if args.flops and base in counted:
                report.setdefault("stage_flops", {})[base] = counted[base]
            elif args.flops:
                print(f"counting FLOPs of {base} ...", file=sys.stderr)
                counted[base] = stage_flops(predictor, images[0])
                report.setdefault("stage_flops", {})[base] = counted[base]
            print(f"timing hiera + {name} ({label} proposals, method {method}, {plabel}) ...", file=sys.stderr)
            with precast(cast):
                report["settings"][key] = time_images(predictor, images[:args.images], device, args.warmup)
            report["settings"][key]["decoded_prompts"] = source.stats.get("decoded_prompts")
            report["settings"][key]["dtype"], report["settings"][key]["precast"] = dtype, cast
            if args.flops:
                peak = report["matmul_peak_gflops"][dtype]
                rates = {st: counted[base][st] / report["settings"][key][st] / 1e9 for st in FLOP_STAGES
                         if report["settings"][key][st] > 0}
                report["settings"][key]["gflops"] = rates
                report["settings"][key]["fraction_of_peak"] = {st: r / peak for st, r in rates.items()}
        matcher.compute_dtype = "fp32"
        dim, grid = int(matcher.vit.config.hidden_size), matcher.input_size // matcher.patch_size
        report["bank"][name] = bank_sizes(dim, grid)
        del matcher, predictor
    if "upstream" in engines and "fast" in engines:
        settings = report["settings"]
        report["engine_speedup"] = {k.replace(":fast", ""): settings[k.replace(":fast", ":upstream")]["total"]
                                    / settings[k]["total"] for k in settings if ":fast" in k and "+adaptive" not in k}
    if len(precisions) > 1 and "fp32" in dtypes:
        settings = report["settings"]
        for key, value in settings.items():
            plabel = next((pl for pl, _, _ in precisions if key.endswith(":" + pl)), None)
            if plabel is None or plabel == "fp32":
                continue
            ref = settings[key[: -len(plabel)] + "fp32"]
            report.setdefault("dtype_ratio", {})[key] = {st: value[st] / ref[st] for st in (*STAGES, "total")
                                                         if ref[st] > 0}
    if len(methods) > 1:
        settings = report["settings"]
        report["method_ratio"] = {k.removesuffix(":ntt"): settings[k]["total"] / settings[k[:-4] + ":vitplug"]["total"]
                                  for k in settings if k.endswith(":ntt")}
    del sam2, sources

    if args.shared_config:
        print(f"building {args.shared_config} (random, frozen ViT) ...", file=sys.stderr)
        dino = build_sam2_vit(args.shared_config, None, device=device, hydra_overrides_extra=[
            "++model.image_encoder.trunk.random_init=true", "++model.image_encoder.trunk.freeze_vit=true",
            f"++model.image_size={args.image_size}", *args.sam2_override])
        trunk = dino.image_encoder.trunk
        loaded = LoadedEncoder(model=trunk.vit, family=trunk.family, source="random", location="shared trunk")
        matcher = HFMatcherEncoder(loaded, "shared-trunk-vit").to(device)
        bank = random_bank(matcher, args.classes, 10, method=methods[0])
        for mode, shared in (("two_pass", False), ("shared", True)):
            src = SAM2Proposals(dino, points_per_side=args.points_per_side, points_batch=args.points_batch,
                                iou_thr=cfg.proposals.iou_thr, shared_backbone=shared)
            predictor = FewShotPredictor(bank, src, matcher, cfg)
            print(f"timing {args.shared_config} {mode} ...", file=sys.stderr)
            report["settings"][f"{Path(args.shared_config).stem}:{mode}"] = time_images(
                predictor, images[:args.images], device, args.warmup)
        two, one = (report["settings"][f"{Path(args.shared_config).stem}:{m}"] for m in ("two_pass", "shared"))
        report["shared_backbone_speedup"] = {
            "per_image": two["total"] / one["total"],
            "encoders": (two["sam2_encoder"] + two["matcher_encoder"]) / (one["sam2_encoder"] + one["matcher_encoder"]),
        }
    worst = max(args.points_per_side, 32) ** 2  # at least the default 32x32 grid's 1024 masks
    report["merging_worst_case_s"] = {"masks": worst, "grid": int(cfg.merging.grid),
                                      "seconds": merge_worst_case(worst, int(cfg.merging.grid), device)}
    if "ntt" in methods:
        cap = int(cfgs["ntt"].scoring.nms_cap or worst)
        report["merging_full_worst_case_s"] = {"masks": cap, "height": height, "width": width,
                                               "seconds": merge_full_worst_case(cap, height, width)}
    report["peak_memory_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
                                else peak_rss_mb())
    report["peak_memory_kind"] = "cuda max_memory_allocated" if device.startswith("cuda") else "process peak RSS"
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    header = ["setting", *STAGES, "total", "merge %", "dets", "peak MiB", "prompts"]
    rows = [[k, *(f"{v[s]:.3f}" for s in STAGES), f"{v['total']:.3f}", f"{100 * v['merging_share']:.2f}",
             f"{v['detections']:.0f}", f"{v['peak_image_mib']:.0f}",
             "-" if v.get("decoded_prompts") is None else f"{v['decoded_prompts']:.0f}"]
            for k, v in report["settings"].items()]
    print_table(header, rows)
    print(f"\nseconds per image on {device} ({report['torch_threads']} threads), "
          f"{args.points_per_side}x{args.points_per_side} points, {height}x{width} px targets, load average "
          f"{report['loadavg_start']} -> {report['loadavg_end']}")
    for key, ratio in report.get("engine_speedup", {}).items():
        print(f"{key}: fast proposal engine {ratio:.2f}x faster per image than upstream's (end to end)")
    for key, ratios in report.get("dtype_ratio", {}).items():
        print(f"{key} / fp32 (same run): " + ", ".join(f"{st} {r:.2f}x" for st, r in ratios.items()))
    if "matmul_peak_gflops" in report:
        print("matmul peak (" + "x".join(map(str, PEAK_SHAPE)) + "): "
              + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in report["matmul_peak_gflops"].items()))
        for key, value in report["settings"].items():
            if "gflops" in value:
                print(f"{key}: " + ", ".join(f"{st} {g:.0f} GFLOP/s ({100 * value['fraction_of_peak'][st]:.0f}% of "
                                             f"{value['dtype']} peak)" for st, g in value["gflops"].items()))
    for key, ratio in report.get("method_ratio", {}).items():
        print(f"{key}: ntt method {ratio:.2f}x the vitplug preset's time per image (same run)")
    for name, b in report["bank"].items():
        print(f"bank {name}: {b['classes']}x{b['shots']} x {b['dim']}: {b['bank_bytes'] / 2**20:.1f} MiB vs 37x37 token "
              f"maps {b['token_map_bytes'] / 2**30:.1f} GiB -> {b['ratio']:.0f}x smaller; vs its own "
              f"{b['native_grid']}x{b['native_grid']} maps {b['native_ratio']:.0f}x")
    if "shared_backbone_speedup" in report:
        s = report["shared_backbone_speedup"]
        print(f"shared backbone: {s['per_image']:.2f}x per image, {s['encoders']:.2f}x on the encoders")
    if "merging_full_worst_case_s" in report:
        w = report["merging_full_worst_case_s"]
        print(f"ntt merging (full-res exact IoS), {w['masks']} random rectangles at {w['height']}x{w['width']}: "
              f"{w['seconds']:.3f} s")
    w = report["merging_worst_case_s"]
    print(f"soft merging, all {w['masks']} masks kept: {w['seconds']:.3f} s; peak memory {report['peak_memory_mb']:.0f} MB "
          f"({report['peak_memory_kind']})")
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
