#!/usr/bin/env python
"""Proposal recall of the full point grid vs adaptive prompting, on a COCO split, with a trained SAM2.

Recall@t is the fraction of ground-truth instances (non-crowd) matched by at least one proposal
at mask IoU >= t (t = 0.5, 0.75), measured on the raw proposals of the few-shot pipeline's
proposal stage (``SAM2Proposals``, before NMS and scoring), at full image resolution. For each
setting it reports recall, mean best IoU per instance, decoded prompts and kept proposals per
image, and seconds. Adaptive prompts are a subset of the full grid, so its recall can only be
lower or equal; the question is by how much, for how many fewer prompts.

The model: any SAM2 config + checkpoint (+ Hydra overrides), or ``--build-record`` pointing at a
training run's ``config.yaml`` (``vitplug_train.build_sam2``: config and overrides, as written by
``training_ext``). The checkpoint is loaded strictly in full (a model trained with its own trunk);
``--exclude-trunk`` loads an upstream SAM 2.1 checkpoint around a swapped trunk instead.

    HF_HUB_OFFLINE=1 python tools/proposal_recall.py --build-record RUN/config.yaml \\
        --sam2-ckpt RUN/checkpoints/checkpoint.pt --ann DATA/val/annotations.json \\
        --images DATA/val/images --iou-thr 0.0 --out bench_out/recall.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

warnings.filterwarnings("ignore", category=UserWarning)

THRESHOLDS = (0.5, 0.75)


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the SAM2 model named by ``--sam2-config``/``--build-record`` and load ``--sam2-ckpt``."""
    from sam2_vitplug.build import TRUNK_PREFIXES, build_sam2_vit, load_sam2_weights

    config, overrides = args.sam2_config, list(args.sam2_override)
    if args.build_record:
        import yaml

        path = Path(args.build_record)
        if not path.is_file():
            raise FileNotFoundError(f"--build-record '{path}' does not exist")
        record = (yaml.safe_load(path.read_text()) or {}).get("vitplug_train", {}).get("build_sam2")
        if not record or "config" not in record:
            raise ValueError(f"'{path}' has no vitplug_train.build_sam2 record (a training_ext run's config.yaml)")
        config = config or record["config"]
        overrides = [*record.get("overrides", []), *overrides]
    if not config:
        raise ValueError("pass --sam2-config (and --sam2-ckpt) or --build-record")
    model = build_sam2_vit(config, None, device=args.device, hydra_overrides_extra=overrides)
    if args.sam2_ckpt:
        load_sam2_weights(model, args.sam2_ckpt, exclude=TRUNK_PREFIXES if args.exclude_trunk else ())
    return model.eval(), {"config": config, "overrides": overrides, "checkpoint": args.sam2_ckpt}


def mask_ious(logits: torch.Tensor, render, gt: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``(G,)`` best IoU of each ground-truth mask ``gt (G, H, W)`` over all proposals, at full resolution."""
    best = torch.zeros(gt.shape[0])
    if len(logits) == 0 or gt.shape[0] == 0:
        return best
    gt_f = gt.flatten(1).float()
    gt_area = gt_f.sum(1)
    for start in range(0, len(logits), chunk):
        masks = render(torch.arange(start, min(len(logits), start + chunk))).flatten(1).float()
        inter = masks @ gt_f.T
        union = masks.sum(1, keepdim=True) + gt_area[None] - inter
        best = torch.maximum(best, (inter / union.clamp(min=1)).amax(0))
    return best


def evaluate_setting(source, images: list[tuple[int, np.ndarray, torch.Tensor]]) -> dict[str, Any]:
    best_all, decoded, kept, seconds = [], [], [], []
    for image_id, rgb, gt in images:
        t0 = time.perf_counter()
        props = source(rgb, image_id)
        seconds.append(time.perf_counter() - t0)
        decoded.append(props.stats.get("decoded_prompts", float("nan")))
        kept.append(len(props))
        best_all.append(mask_ious(props.lowres, props.render, gt))
    best = torch.cat(best_all) if best_all else torch.zeros(0)
    out = {f"recall@{t}": float((best >= t).float().mean()) if len(best) else float("nan") for t in THRESHOLDS}
    out.update(mean_best_iou=float(best.mean()) if len(best) else float("nan"), instances=int(len(best)),
               images=len(images), decoded_prompts_mean=float(np.mean(decoded)),
               decoded_prompts_min=float(np.min(decoded)), decoded_prompts_max=float(np.max(decoded)),
               kept_mean=float(np.mean(kept)), seconds_per_image=float(np.mean(seconds)))
    return out


def load_images(ann: str, image_root: str, limit: int | None) -> list[tuple[int, np.ndarray, torch.Tensor]]:
    from sam2_vitplug.matching.io import load_coco_json, load_rgb
    from sam2_vitplug.matching.references import decode_segmentation

    coco = load_coco_json(ann)
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0) and a.get("segmentation"):
            by_image.setdefault(int(a["image_id"]), []).append(a)
    out = []
    for im in sorted(coco["images"], key=lambda i: int(i["id"]))[:limit]:
        path = Path(image_root) / im["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image '{path}' of {ann} is missing; check --images")
        rgb = load_rgb(path)
        h, w = rgb.shape[:2]
        anns = by_image.get(int(im["id"]), [])
        gt = torch.from_numpy(np.stack([decode_segmentation(a["segmentation"], h, w) for a in anns])) if anns \
            else torch.zeros(0, h, w, dtype=torch.bool)
        out.append((int(im["id"]), rgb, gt))
    return out


def write_coins_split(out: Path) -> tuple[Path, Path]:
    """A small real-photo COCO split: scikit-image's ``coins`` photo (24 coins) and its 3 flips.

    Ground truth comes from the classic watershed segmentation of that photo (Sobel elevation,
    dark/bright markers, hole filling; blobs under 100 px dropped), not from people: good
    enough to ask whether adaptive prompting misses objects the full grid finds."""
    from PIL import Image
    from pycocotools import mask as mask_utils
    from scipy import ndimage as ndi
    from skimage import data, filters, segmentation

    gray = data.coins()
    markers = np.zeros_like(gray)
    markers[gray < 30], markers[gray > 150] = 1, 2
    fg = ndi.binary_fill_holes(segmentation.watershed(filters.sobel(gray), markers) - 1)
    labels, count = ndi.label(fg)
    (out / "images").mkdir(parents=True, exist_ok=True)
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "coin"}]}
    flips = {"coins.png": (False, False), "coins_lr.png": (False, True), "coins_ud.png": (True, False),
             "coins_both.png": (True, True)}
    for image_id, (name, (ud, lr)) in enumerate(flips.items(), start=1):
        img, lab = gray, labels
        if ud:
            img, lab = img[::-1], lab[::-1]
        if lr:
            img, lab = img[:, ::-1], lab[:, ::-1]
        Image.fromarray(np.repeat(np.ascontiguousarray(img)[..., None], 3, 2)).save(out / "images" / name)
        coco["images"].append({"id": image_id, "file_name": name, "height": img.shape[0], "width": img.shape[1]})
        for k in range(1, count + 1):
            m = np.asfortranarray((lab == k).astype(np.uint8))
            if m.sum() < 100:
                continue
            rle = mask_utils.encode(m)
            rle["counts"] = rle["counts"].decode("ascii")
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                                        "segmentation": rle, "area": float(m.sum()), "iscrowd": 0,
                                        "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    (out / "annotations.json").write_text(json.dumps(coco))
    return out / "annotations.json", out / "images"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sam2-config", default=None, help="SAM2 config (ours or upstream)")
    parser.add_argument("--sam2-ckpt", default=None, help="checkpoint (.pt with 'model', or .safetensors)")
    parser.add_argument("--sam2-override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--build-record", default=None, help="a training run's config.yaml (config + overrides)")
    parser.add_argument("--exclude-trunk", action="store_true", help="load the checkpoint around the trunk only")
    parser.add_argument("--ann", default=None, help="COCO instances json with masks")
    parser.add_argument("--images", default=None, help="image folder of --ann")
    parser.add_argument("--coins", default=None, metavar="DIR",
                        help="instead of --ann/--images: write and use a real-photo split (scikit-image coins)")
    parser.add_argument("--limit", type=int, default=None, help="first N images (by id)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--iou-thr", type=float, default=0.4, help="predicted-IoU threshold of kept proposals")
    parser.add_argument("--adaptive", default="8", help="comma list of adaptive start grids (e.g. 4,8)")
    parser.add_argument("--min-gain", type=float, default=0.0)
    parser.add_argument("--max-area", type=float, default=1.0)
    parser.add_argument("--cover-iou", default="none",
                        help="comma list of AdaptiveConfig.cover_iou values ('none': the proposals' --iou-thr)")
    parser.add_argument("--cover-stability", default="0", help="comma list of AdaptiveConfig.cover_stability values")
    parser.add_argument("--engine", choices=("fast", "upstream"), default="fast")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 images, 8x8 points, adaptive start 2")
    parser.add_argument("--out", required=True, help="JSON output")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit, args.points_per_side, args.adaptive = 2, 8, "2"
    starts = [int(s) for s in args.adaptive.split(",") if s.strip()]
    from sam2_vitplug.matching.adaptive import AdaptiveConfig
    from sam2_vitplug.matching.proposals import SAM2Proposals

    cover_ious = [None if v.strip().lower() == "none" else float(v) for v in args.cover_iou.split(",") if v.strip()]
    stabilities = [float(v) for v in args.cover_stability.split(",") if v.strip()]
    configs = {f"adaptive_{s}_cover{'thr' if ci is None else f'{ci:g}'}_stab{cs:g}": AdaptiveConfig(
        start=s, min_gain=args.min_gain, max_area=args.max_area, cover_iou=ci, cover_stability=cs)
        for s in starts for ci in cover_ious for cs in stabilities}
    for cfg in configs.values():
        cfg.check(args.points_per_side)  # bad settings fail before the model is built
    if args.coins:
        args.ann, args.images = (str(p) for p in write_coins_split(Path(args.coins)))
    if not args.ann or not args.images:
        raise ValueError("pass --ann and --images (a COCO split with masks), or --coins DIR")
    if args.threads:
        torch.set_num_threads(args.threads)
    images = load_images(args.ann, args.images, args.limit)
    model, model_info = load_model(args)
    report: dict[str, Any] = {"model": model_info, "ann": args.ann, "points_per_side": args.points_per_side,
                              "iou_thr": args.iou_thr, "engine": args.engine, "settings": {},
                              "loadavg": [round(x, 2) for x in os.getloadavg()]}
    full = SAM2Proposals(model, points_per_side=args.points_per_side, iou_thr=args.iou_thr, engine=args.engine)
    print(f"full {args.points_per_side}x{args.points_per_side} grid ...", file=sys.stderr)
    report["settings"]["full_grid"] = evaluate_setting(full, images)
    for name, cfg in configs.items():
        print(f"{name} ...", file=sys.stderr)
        src = SAM2Proposals(model, points_per_side=args.points_per_side, iou_thr=args.iou_thr, engine=args.engine,
                            adaptive=cfg)
        report["settings"][name] = {**evaluate_setting(src, images), **dataclasses.asdict(cfg)}
    ref = report["settings"]["full_grid"]
    for row in report["settings"].values():
        for t in THRESHOLDS:
            row[f"recall@{t}_points_below_full"] = 100 * (ref[f"recall@{t}"] - row[f"recall@{t}"])
        row["prompt_fraction"] = row["decoded_prompts_mean"] / ref["decoded_prompts_mean"]

    header = ["setting", "recall@0.5", "recall@0.75", "mean IoU", "prompts/img", "x full", "kept/img", "s/img"]
    rows = [[k, f"{v['recall@0.5']:.3f}", f"{v['recall@0.75']:.3f}", f"{v['mean_best_iou']:.3f}",
             f"{v['decoded_prompts_mean']:.0f}", f"{v['prompt_fraction']:.2f}", f"{v['kept_mean']:.0f}",
             f"{v['seconds_per_image']:.2f}"] for k, v in report["settings"].items()]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"{ref['instances']} instances on {ref['images']} images; model {model_info['config']} "
          f"({model_info['checkpoint']})")
    from sam2_vitplug.matching.io import atomic_write_json

    atomic_write_json(args.out, report, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
