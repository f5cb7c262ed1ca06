#!/usr/bin/env python
"""Benchmark and learning check for the segmentation heads (``sam2_vitplug.heads``).

One run measures three things (``--parts``):

* ``throughput``: for every encoder geometry (random weights, ``random_init=True``; default
  DINOv3 ViT-S/B/L, patch 16, so 512 px is a 32x32 grid) and every head, inference images/s
  (``batch / (backbone + head)``; the backbone is timed once per encoder), the frozen
  backbone's and the head's time (the pyramid counts as head: it is trained), the head as a
  fraction of the backbone, a head training step (forward +
  backward from given features) and the per-step speed-up of training from cached features
  ``(backbone + head step) / head step``. Peak memory: on CUDA
  ``max_memory_allocated`` growth; on CPU the growth of the process's peak RSS (VmHWM reset
  through ``/proc/self/clear_refs`` before each call) -- Linux only, else null.
* ``cache``: wall time of training the linear head for ``--cache-epochs`` epochs with and
  without ``--cache-features`` on the synthetic shapes data (time to build the cache included).
* ``learning``: each head trained for ``--learn-epochs`` (a few CPU minutes by default) on
  the synthetic shapes data with a frozen tiny random-weight ViT, validation mIoU beside a
  majority-class baseline measured with the same metric code. Random weights: these numbers
  say the heads learn, not how well a pretrained backbone segments.
* ``precision`` (with ``--dtype``, e.g. ``--dtype bf16``; fp32 is always the reference):
  ``predict_scores`` (the ``seg predict``/``eval`` model path: resize, pad, ViT, head, fp32
  scores) timed on ``--precision-encoder`` (random weights, real size) for every head in
  fp32, in each reduced dtype, and in that dtype with the ViT weights not pre-cast (autocast
  re-casting them every call), interleaved repeat by repeat in one run so that machine load
  hits every variant alike; ``x_fp32`` is the median time over fp32's (``x_fp32_best``: best
  of the repeats; ``x_fp32_cpu``: this process's CPU time, the least disturbed by other
  jobs). Agreement: the largest score difference and the share of pixels whose class
  differs, on that random model and on each head trained briefly on the synthetic shapes with
  the tiny ViT (the ``learning`` heads when that part ran, else ``--precision-epochs``
  epochs), with the mIoU in each dtype.

    HF_HUB_OFFLINE=1 python tools/bench_seghead.py --out bench_out/seghead.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import loadavg, machine_info, median, print_table, time_repeats, timed, write_json_atomic  # noqa: E402
from benchmem import MemProbe  # noqa: E402
from make_synthetic_dataset import DatasetSpec, make_dataset  # noqa: E402

from sam2_vitplug.cli import default_device  # noqa: E402
from sam2_vitplug.heads import infer  # noqa: E402
from sam2_vitplug.heads.data import load_mask, load_rgb, pair_paths, write_class_masks_from_coco  # noqa: E402
from sam2_vitplug.heads.metrics import confusion_matrix, metrics_from_confusion  # noqa: E402
from sam2_vitplug.heads.model import SegModelConfig, build_seg_model, load_seg_model, read_checkpoint  # noqa: E402
from sam2_vitplug.heads.train import TrainConfig, train  # noqa: E402
from sam2_vitplug.precision import check_dtype, precast  # noqa: E402

HEADS = ("linear", "upernet", "mask2former")
# a linear probe wants a larger step than the deeper heads (measured: linear 1e-3 -> val mIoU
# 0.235, 1e-2 -> 0.272 on the default learning setup)
LEARN_LR = {"linear": 1e-2, "upernet": 1e-3, "mask2former": 1e-3}
LEARN_HEAD_OPTS = {
    "linear": [],
    "upernet": ["head.channels=64"],
    "mask2former": ["head.num_queries=16", "head.hidden_dim=64", "head.mask_dim=64", "head.heads=4",
                    "head.ffn_dim=128", "head.dec_layers=3"],
}


# ---- timing and memory ---------------------------------------------------------------------
def measure(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, float | None]:
    """Median seconds over ``repeats`` calls after one warm-up, and the peak memory growth (MiB)
    of the first timed call."""
    timed(fn, device)  # warm-up
    probe = MemProbe(device, enabled=True)
    probe.start()
    _, first, _ = timed(fn, device)
    peak = probe.stop().get("peak_mib")
    rest = time_repeats(fn, device, warmup=0, repeats=repeats - 1)
    return median([first, *rest.times_s]), peak


def bench_throughput(args, device: torch.device) -> list[dict[str, Any]]:
    """Backbone timed once per encoder (the ViT is the same for every head); a head's
    images/s is ``batch / (backbone_s + head_s)``, the two run back to back."""
    rows = []
    for encoder in args.encoders:
        backbone: tuple[float, float | None] | None = None
        for head in args.heads:
            torch.manual_seed(0)
            cfg = SegModelConfig(head=head, encoder=encoder, num_classes=args.num_classes, image_size=args.image_size,
                                 random_init=not os.path.isdir(encoder), head_overrides=list(args.head_opt.get(head, [])))
            model = build_seg_model(cfg, device=device).eval()
            x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
            with torch.no_grad():  # not inference_mode: maps feed the training step below
                maps = model.vit_features(x)
                if backbone is None:
                    backbone = measure(lambda: model.vit_features(x), device, args.repeats)
                head_s, head_mem = measure(lambda: model.scores(model.forward_features(maps), x.shape[-2:]), device,
                                           args.repeats)
            backbone_s, backbone_mem = backbone
            model.train()
            labels = torch.randint(0, args.num_classes, (args.batch_size, args.image_size, args.image_size),
                                   device=device)
            params = [p for p in model.parameters() if p.requires_grad]

            def step():
                loss = model.loss(model.forward_features(maps), labels)
                loss.backward()
                for p in params:
                    p.grad = None
            step_s, step_mem = measure(step, device, args.repeats)
            row = {
                "encoder": encoder, "head": head, "image_size": args.image_size, "batch": args.batch_size,
                "embed_dim": model.trunk.embed_dim, "vit_layers": model.trunk.num_layers,
                "head_params_M": sum(p.numel() for p in params) / 1e6,
                "images_per_s": args.batch_size / (backbone_s + head_s), "backbone_s": backbone_s,
                "head_s": head_s, "head_over_backbone": head_s / backbone_s, "head_train_step_s": step_s,
                "cached_step_speedup": (backbone_s + step_s) / step_s,
                "peak_mem_MiB": {"backbone": backbone_mem, "head": head_mem, "head_train": step_mem},
            }
            rows.append(row)
            print(f"  {encoder:<14} {head:<12} {row['images_per_s']:8.3f} img/s  backbone {backbone_s:7.3f}s  "
                  f"head {head_s:7.3f}s ({row['head_over_backbone']:.2f}x)  train step {step_s:7.3f}s", flush=True)
            del model, maps
    return rows


# ---- data and tiny backbone ------------------------------------------------------------------
def make_shapes(root: Path, train_n: int, val_n: int, size: int) -> dict[str, str]:
    make_dataset(root / "ds", DatasetSpec(train=train_n, val=val_n, image_size=size, seed=0))
    for split in ("train", "val"):
        write_class_masks_from_coco(root / "ds" / split / "annotations.json", root / "masks" / split)
    return {"train_images": str(root / "ds/train/images/*.jpg"), "train_masks": str(root / "masks/train/*.png"),
            "val_images": str(root / "ds/val/images/*.jpg"), "val_masks": str(root / "masks/val/*.png")}


def make_tiny_vit(path: Path) -> str:
    """DINOv2-architecture ViT, hidden 32, 4 blocks, patch 14, seeded random weights (the
    test fixture's geometry)."""
    import transformers as T

    torch.manual_seed(0)
    model = T.AutoModel.from_config(T.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                                   intermediate_size=64, patch_size=14, image_size=518))
    model.save_pretrained(path)
    return str(path)


def majority_baseline(data: dict[str, str], num_classes: int) -> dict[str, Any]:
    """Predict the most frequent training class everywhere; score on validation."""
    counts = torch.zeros(num_classes, dtype=torch.long)
    for _, mask in pair_paths(data["train_images"], data["train_masks"]):
        values = torch.from_numpy(load_mask(mask)).flatten()
        counts += torch.bincount(values[values != 255], minlength=num_classes)[:num_classes]
    majority = int(counts.argmax())
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for _, mask in pair_paths(data["val_images"], data["val_masks"]):
        target = torch.from_numpy(load_mask(mask))
        conf += confusion_matrix(torch.full_like(target, majority), target, num_classes)
    return {"class": majority, **metrics_from_confusion(conf)}


def bench_cache(args, device, data, encoder, work: Path) -> dict[str, Any]:
    model_cfg = SegModelConfig(head="linear", encoder=encoder, num_classes=5, image_size=args.data_size,
                               random_init=not os.path.isdir(encoder))
    base = TrainConfig(image_paths=data["train_images"], mask_paths=data["train_masks"], epochs=args.cache_epochs,
                       warmup_epochs=0, batch_size=8, num_workers=0, device=str(device), progress=False)
    out = {}
    for name, cached in (("uncached", False), ("cached", True)):
        _, out[f"{name}_s"], _ = timed(lambda: train(model_cfg, replace(
            base, cache_features=cached, checkpoint_dir=str(work / f"cache_{name}"))), device)
        history = json.loads((work / f"cache_{name}" / "history.json").read_text())
        out[f"{name}_epoch_s"] = [h["epoch_seconds"] for h in history]
    out["speedup_total"] = out["uncached_s"] / out["cached_s"]
    out["speedup_per_epoch_after_cache"] = (sum(out["uncached_epoch_s"]) / sum(out["cached_epoch_s"]))
    out.update(encoder=encoder, epochs=args.cache_epochs, image_size=args.data_size)
    print(f"  cache: {out['uncached_s']:.1f}s uncached vs {out['cached_s']:.1f}s cached (incl. building the cache) "
          f"= {out['speedup_total']:.2f}x; per epoch {out['speedup_per_epoch_after_cache']:.2f}x", flush=True)
    return out


def bench_learning(args, device, data, encoder, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"baseline_majority": majority_baseline(data, 5)}
    print(f"  majority-class baseline: mIoU {result['baseline_majority']['mIoU']:.4f} "
          f"pixel acc {result['baseline_majority']['pixel_accuracy']:.4f}", flush=True)
    for head in args.heads:
        model_cfg = SegModelConfig(head=head, encoder=encoder, num_classes=5, image_size=args.data_size,
                                   head_overrides=LEARN_HEAD_OPTS[head],
                                   class_names=["background", "circle", "square", "triangle", "star"])
        epochs = args.learn_epochs
        lr = args.learn_lr if args.learn_lr is not None else LEARN_LR.get(head, 1e-3)
        cfg = TrainConfig(image_paths=data["train_images"], mask_paths=data["train_masks"],
                          val_image_paths=data["val_images"], val_mask_paths=data["val_masks"], epochs=epochs,
                          warmup_epochs=max(1, epochs // 10), lr=lr, batch_size=8, num_workers=0,
                          device=str(device), progress=False, checkpoint_dir=str(work / f"learn_{head}"))
        last, seconds, _ = timed(lambda: train(model_cfg, cfg), device)
        best = read_checkpoint(work / f"learn_{head}" / "best.pt")
        history = json.loads((work / f"learn_{head}" / "history.json").read_text())
        result[head] = {"epochs": epochs, "lr": lr, "seconds": seconds,
                        "final": last, "best_mIoU": best["best_miou"], "mIoU_by_epoch": [h["mIoU"] for h in history]}
        print(f"  {head:<12} {epochs:3d} epochs {result[head]['seconds']:6.1f}s  val mIoU final {last['mIoU']:.4f} "
              f"best {best['best_miou']:.4f} pixel acc {last['pixel_accuracy']:.4f}", flush=True)
    return result


# ---- reduced precision -----------------------------------------------------------------------
def score_agreement(low: torch.Tensor, full: torch.Tensor) -> dict[str, float]:
    """Largest score difference (absolute and over the largest fp32 score) and the share of
    pixels whose argmax class differs, for ``(K, H, W)`` fp32 score maps."""
    diff = (low - full).abs().max()
    return {"max_abs_score_diff": float(diff), "rel_max_score_diff": float(diff / full.abs().max().clamp_min(1e-30)),
            "pixels_differing": float((low.argmax(0) != full.argmax(0)).float().mean())}


def _without_precast(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    with precast(False):
        return fn()


def bench_precision_speed(args, device: torch.device) -> list[dict[str, Any]]:
    """``predict_scores`` per head and dtype on one real-size random-weight model, the variants
    interleaved repeat by repeat."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    rgb = (torch.rand(args.image_size, args.image_size, 3, generator=gen) * 255).to(torch.uint8).numpy()
    for head in args.heads:
        torch.manual_seed(0)
        cfg = SegModelConfig(head=head, encoder=args.precision_encoder, num_classes=args.num_classes,
                             image_size=args.image_size, random_init=not os.path.isdir(args.precision_encoder),
                             head_overrides=list(args.head_opt.get(head, [])))
        model = build_seg_model(cfg, device=device).eval()
        variants: dict[str, Callable[[], torch.Tensor]] = {"fp32": lambda: infer.predict_scores(model, rgb)}
        for dtype in args.dtypes[1:]:
            variants[dtype] = lambda d=dtype: infer.predict_scores(model, rgb, dtype=d)
            # autocast without pre-casting (the frozen ViT's weights re-cast every forward)
            variants[f"{dtype}_noprecast"] = lambda d=dtype: _without_precast(
                lambda: infer.predict_scores(model, rgb, dtype=d))
        outputs = {name: timed(fn, device)[0] for name, fn in variants.items()}  # warm-up, and the outputs
        times: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                _, wall, cpu_s = timed(fn, device)
                times[name].append(wall)
                cpu[name].append(cpu_s)
        ref_s, ref_best, ref_cpu = median(times["fp32"]), min(times["fp32"]), median(cpu["fp32"])
        for name in variants:
            # median wall time; best-of and this process's CPU time are less disturbed by other load
            row = {"encoder": args.precision_encoder, "head": head, "image_size": args.image_size,
                   "dtype": name.split("_")[0], "precast": not name.endswith("_noprecast"), "variant": name,
                   "seconds": median(times[name]), "times_s": times[name], "best_s": min(times[name]),
                   "cpu_s": median(cpu[name]), "x_fp32": median(times[name]) / ref_s,
                   "x_fp32_best": min(times[name]) / ref_best, "x_fp32_cpu": median(cpu[name]) / ref_cpu}
            if name != "fp32":
                row.update(score_agreement(outputs[name], outputs["fp32"]))
            rows.append(row)
            agree = f"  pixels differing {row['pixels_differing']:.2e}" if name != "fp32" else ""
            print(f"  {args.precision_encoder:<14} {head:<12} {name:<16} {row['seconds']:7.3f}s  x fp32 "
                  f"{row['x_fp32']:.3f} (best {row['x_fp32_best']:.3f}, cpu {row['x_fp32_cpu']:.3f}){agree}",
                  flush=True)
        del model, outputs
    return rows


def bench_precision_agreement(args, device, data, encoder, work: Path, learned: bool) -> dict[str, Any]:
    """mIoU and per-pixel agreement of every dtype with fp32 on trained heads (validation set)."""
    pairs = pair_paths(data["val_images"], data["val_masks"])
    result: dict[str, Any] = {}
    for head in args.heads:
        ckpt = work / f"learn_{head}" / "best.pt"
        epochs = None
        if not learned:
            epochs = args.precision_epochs
            model_cfg = SegModelConfig(head=head, encoder=encoder, num_classes=5, image_size=args.data_size,
                                       head_overrides=LEARN_HEAD_OPTS[head])
            cfg = TrainConfig(image_paths=data["train_images"], mask_paths=data["train_masks"], epochs=epochs,
                              warmup_epochs=1, lr=LEARN_LR.get(head, 1e-3), batch_size=8, num_workers=0,
                              device=str(device), progress=False, checkpoint_dir=str(work / f"prec_{head}"))
            train(model_cfg, cfg)
            ckpt = work / f"prec_{head}" / "last.pt"
        model = load_seg_model(ckpt, device=device)
        entry: dict[str, Any] = {"checkpoint": "learning best.pt" if learned else f"{epochs} epochs",
                                 "images": len(pairs)}
        full_scores = [infer.predict_scores(model, load_rgb(image)) for image, _ in pairs]
        for dtype in args.dtypes:
            metrics = metrics_from_confusion(infer.evaluate(model, pairs, dtype=dtype))
            cell: dict[str, Any] = {"mIoU": metrics["mIoU"], "pixel_accuracy": metrics["pixel_accuracy"]}
            if dtype != "fp32":
                low_scores = [infer.predict_scores(model, load_rgb(image), dtype=dtype) for image, _ in pairs]
                agree = [score_agreement(lo, hi) for lo, hi in zip(low_scores, full_scores)]
                pixels = [lo.argmax(0).numel() for lo in low_scores]
                cell.update(mIoU_diff=metrics["mIoU"] - entry["fp32"]["mIoU"],
                            max_abs_score_diff=max(a["max_abs_score_diff"] for a in agree),
                            rel_max_score_diff=max(a["rel_max_score_diff"] for a in agree),
                            pixels_differing=sum(a["pixels_differing"] * n for a, n in zip(agree, pixels)) / sum(pixels))
            entry[dtype] = cell
            print(f"  {head:<12} {dtype:<5} val mIoU {cell['mIoU']:.4f}" + (
                f"  diff {cell['mIoU_diff']:+.2e}  pixels differing {cell['pixels_differing']:.2e}  max |score diff| "
                f"{cell['max_abs_score_diff']:.2e}" if dtype != "fp32" else ""), flush=True)
        result[head] = entry
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON output path")
    parser.add_argument("--parts", default="throughput,cache,learning")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--encoders", default="dinov3_small,dinov3_base,dinov3_large",
                        help="comma-separated presets (random weights) or local model directories")
    parser.add_argument("--heads", default=",".join(HEADS))
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=150, help="throughput: ADE20K's 150")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per cell after one warm-up")
    parser.add_argument("--head-opt", action="append", default=[], metavar="HEAD:KEY=VALUE",
                        help="throughput head override, e.g. upernet:head.channels=256")
    parser.add_argument("--data-size", type=int, default=128, help="synthetic image size (cache, learning)")
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--val-images", type=int, default=32)
    parser.add_argument("--cache-epochs", type=int, default=3)
    parser.add_argument("--cache-encoder", default="dinov3_small", help="encoder for the cache speed-up")
    parser.add_argument("--learn-epochs", type=int, default=15, help="fixed, so every head gets the same budget")
    parser.add_argument("--learn-lr", type=float, default=None, help="one lr for every head (default: per head)")
    parser.add_argument("--learn-encoder", default=None, help="default: a tiny random ViT (hidden 32, 4 blocks)")
    parser.add_argument("--dtype", default="fp32",
                        help="comma-separated compute dtypes compared with fp32 in the precision part (e.g. bf16); "
                             "fp32 alone skips it")
    parser.add_argument("--precision-encoder", default="dinov3_base",
                        help="real-size geometry (random weights) for the precision timing")
    parser.add_argument("--precision-epochs", type=int, default=3,
                        help="epochs of the heads whose agreement is measured, when the learning part does not run")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - {"throughput", "cache", "learning", "precision"}
    if unknown:
        parser.error(f"unknown --parts {sorted(unknown)}; choose from throughput, cache, learning, precision")
    args.encoders = [e for e in args.encoders.split(",") if e]
    args.heads = [h for h in args.heads.split(",") if h]
    opts: dict[str, list[str]] = {}
    for item in args.head_opt:
        head, _, opt = item.partition(":")
        opts.setdefault(head, []).append(opt)
    args.head_opt = opts
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device or default_device())
    try:
        dtypes = [check_dtype(d, device) for d in args.dtype.split(",") if d.strip()]
    except ValueError as err:
        parser.error(str(err))
    args.dtypes = ["fp32"] + [d for d in dict.fromkeys(dtypes) if d != "fp32"]  # fp32: the reference, first
    if len(args.dtypes) > 1 and "precision" not in parts:
        parts.append("precision")
    report: dict[str, Any] = {
        "machine": machine_info(device),
        "args": {k: v for k, v in vars(args).items()},
        "dtypes": args.dtypes,
    }
    with tempfile.TemporaryDirectory(prefix="bench_seghead_") as tmp:
        work = Path(tmp)
        if "throughput" in parts:
            print(f"throughput at {args.image_size}px, batch {args.batch_size}, {device}:", flush=True)
            report["throughput"] = bench_throughput(args, device)
        precision = "precision" in parts and len(args.dtypes) > 1
        if "cache" in parts or "learning" in parts or precision:
            data = make_shapes(work / "shapes", args.train_images, args.val_images, args.data_size)
        if "cache" in parts:
            report["cache"] = bench_cache(args, device, data, args.cache_encoder, work)
        if "learning" in parts:
            encoder = args.learn_encoder or make_tiny_vit(work / "tiny_vit")
            print(f"learning on synthetic shapes ({args.train_images} train / {args.val_images} val, "
                  f"{args.data_size}px, frozen {'tiny random ViT' if not args.learn_encoder else encoder}):", flush=True)
            report["learning"] = bench_learning(args, device, data, encoder, work)
        if precision:
            print(f"precision: predict_scores at {args.image_size}px on {args.precision_encoder} (random weights), "
                  f"{', '.join(args.dtypes)}:", flush=True)
            report["precision"] = {"loadavg_start": loadavg(), "speed": bench_precision_speed(args, device)}
            encoder = args.learn_encoder or (work / "tiny_vit" if (work / "tiny_vit").is_dir()
                                             else make_tiny_vit(work / "tiny_vit"))
            print("precision: agreement with fp32 on heads trained on the synthetic shapes:", flush=True)
            report["precision"]["agreement"] = bench_precision_agreement(args, device, data, str(encoder), work,
                                                                         learned="learning" in parts)
            report["precision"]["loadavg_end"] = loadavg()
    report["machine"]["loadavg_end"] = loadavg()
    if "throughput" in report:
        print()
        header = ["encoder", "head", "img/s", "backbone s", "head s", "head/bb", "train step s", "cache x", "bb MiB",
                  "head MiB", "train MiB"]
        print_table(header, [[r["encoder"], r["head"], f"{r['images_per_s']:.3f}", f"{r['backbone_s']:.3f}",
                              f"{r['head_s']:.3f}", f"{r['head_over_backbone']:.2f}", f"{r['head_train_step_s']:.3f}",
                              f"{r['cached_step_speedup']:.2f}",
                              *("n/a" if v is None else f"{v:.0f}" for v in r["peak_mem_MiB"].values())]
                             for r in report["throughput"]])
    if "precision" in report:
        print()
        print_table(["encoder", "head", "variant", "s", "x fp32", "x fp32 best", "x fp32 cpu", "max |score diff|",
                     "pixels differing"],
                    [[r["encoder"], r["head"], r["variant"], f"{r['seconds']:.3f}", f"{r['x_fp32']:.3f}",
                      f"{r['x_fp32_best']:.3f}", f"{r['x_fp32_cpu']:.3f}",
                      f"{r.get('max_abs_score_diff', 0):.2e}", f"{r.get('pixels_differing', 0):.2e}"]
                     for r in report["precision"]["speed"]])
    write_json_atomic(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
