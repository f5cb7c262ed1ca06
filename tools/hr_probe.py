#!/usr/bin/env python
"""Quality of high-resolution features, measured with what is available offline: a linear
probe on the synthetic shapes dataset (tools/make_synthetic_dataset.py).

A frozen ViT with random weights (no checkpoint can be downloaded here; ``--encoder`` takes
any preset/directory for a trained one) encodes every image; each feature variant is
upsampled to full image resolution:

* ``bilinear``: plain token map, bilinear upsampling (K=1, the baseline);
* ``tavg<K>``: K transforms averaged (``HRFeatureExtractor``), shift ``--shift``;
* ``stride/2``: patch-embedding stride P/2 (4x tokens), bilinear upsampling;
* ``stride/2+tavg<K>``: both.

For every variant the SAME probe (a linear layer C -> 5 classes: background + 4 shapes,
trained with full-batch L-BFGS on the same sampled training pixels, features standardised) is
trained and evaluated at full resolution on the validation images: mIoU over the 5 classes,
and boundary mIoU over the pixels within ``--band`` px (Chebyshev) of a ground-truth class edge.
Prints a table and writes JSON to ``--out``.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python tools/hr_probe.py --out bench_out/hr_probe.json
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_trunk import machine_info, write_json_atomic  # noqa: E402
from make_synthetic_dataset import CLASSES, DatasetSpec, make_dataset  # noqa: E402

log = logging.getLogger("hr_probe")
NUM_CLASSES = len(CLASSES) + 1
TINY_VIT = dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768, patch_size=14,
                image_size=518)


def parse_variant(name: str) -> tuple[int, bool]:
    """``bilinear`` | ``tavg8`` | ``stride/2`` | ``stride/2+tavg8`` -> (K, stride_reduction)."""
    stride = name.startswith("stride/2")
    rest = name.removeprefix("stride/2").removeprefix("+")
    if rest in ("", "bilinear"):
        return 1, stride
    if not rest.startswith("tavg") or not rest[4:].isdigit():
        raise ValueError(f"unknown variant {name!r}; use bilinear, tavg<K>, stride/2 or stride/2+tavg<K>")
    return int(rest[4:]), stride


def build_encoder(args: argparse.Namespace):
    from sam2_vitplug.encoders import load_encoder

    if args.encoder:
        loaded = load_encoder(args.encoder, random_init=args.random_init)
        return loaded.model.eval(), loaded.family, f"{args.encoder}{' (random weights)' if args.random_init else ''}"
    import transformers as T

    torch.manual_seed(args.seed)
    model = T.AutoModel.from_config(T.Dinov2Config(**TINY_VIT)).eval()
    with tempfile.TemporaryDirectory() as tmp:  # through the real loading path (family, prefix tokens)
        model.save_pretrained(tmp)
        loaded = load_encoder(tmp)
    desc = "random-weight DINOv2 ViT " + ", ".join(f"{k}={v}" for k, v in TINY_VIT.items())
    return loaded.model.eval(), loaded.family, desc


def label_map(coco: dict, image_id: int, size: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    labels = np.zeros((size, size), np.int64)
    for ann in (a for a in coco["annotations"] if a["image_id"] == image_id):
        labels[mask_utils.decode(ann["segmentation"]).astype(bool)] = int(ann["category_id"])
    return labels


def boundary_band(labels: torch.Tensor, band: int) -> torch.Tensor:
    """Pixels within ``band`` px (Chebyshev) of a place where the ground-truth class changes."""
    edge = torch.zeros_like(labels, dtype=torch.bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    return F.max_pool2d(edge[None, None].float(), 2 * band + 1, 1, band)[0, 0] > 0


def miou(conf: np.ndarray) -> tuple[float, list[float]]:
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    ious = [float(i / u) if u > 0 else float("nan") for i, u in zip(inter, union)]
    return float(np.nanmean(ious)), ious


def load_split(root: Path, split: str, limit: int, size: int):
    from sam2_vitplug.matching.io import load_coco_json, load_rgb

    coco = load_coco_json(root / split / "annotations.json")
    images = sorted(coco["images"], key=lambda im: im["id"])[:limit]
    for im in images:
        rgb = load_rgb(root / split / "images" / im["file_name"])
        if rgb.shape[:2] != (size, size):
            raise ValueError(f"{im['file_name']} is {rgb.shape[:2]}, expected {size}x{size}; regenerate the dataset")
        yield rgb, label_map(coco, im["id"], size)


def train_probe(x: torch.Tensor, y: torch.Tensor, iters: int, weight_decay: float, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], NUM_CLASSES)
    opt = torch.optim.LBFGS(probe.parameters(), lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from sam2_vitplug.modeling.hr_features import HRFeatureExtractor

    torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else None
    tmpdir = None
    if data is None or not (data / "train" / "annotations.json").is_file():
        if data is None:
            tmpdir = tempfile.TemporaryDirectory()
            data = Path(tmpdir.name) / "shapes"
        make_dataset(data, DatasetSpec(train=args.train, val=args.val, image_size=args.image_size, seed=args.seed),
                     overwrite=True)
    model, family, desc = build_encoder(args)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    variants = {}
    for name in args.variants:
        k, stride = parse_variant(name)
        variants[name] = HRFeatureExtractor(model, family, transforms=k, shift=args.shift if k > 1 else None,
                                            stride_reduction=stride)

    def features(rgb: np.ndarray) -> dict[str, torch.Tensor]:
        x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - mean) / std
        out = {}
        for name, ext in variants.items():
            t0 = time.perf_counter()
            out[name] = ext(x)[0]
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
        return out

    seconds: dict[str, float] = {}
    gen = torch.Generator().manual_seed(args.seed)
    train_x: dict[str, list[torch.Tensor]] = {n: [] for n in variants}
    train_y: list[torch.Tensor] = []
    with torch.inference_mode():
        for rgb, labels in tqdm(list(load_split(data, "train", args.train, args.image_size)), desc="train features",
                                disable=args.quiet, file=sys.stderr):
            idx = torch.randperm(labels.size, generator=gen)[: args.pixels]
            train_y.append(torch.from_numpy(labels).flatten()[idx])
            for name, f in features(rgb).items():
                train_x[name].append(f.flatten(1).T[idx].clone())
    y = torch.cat(train_y)
    probes, stats = {}, {}
    for name in variants:
        x = torch.cat(train_x[name])
        mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
        stats[name] = (mu, sd)
        probes[name] = train_probe((x - mu) / sd, y, args.iters, args.weight_decay, args.seed)
        probes[name].eval()
    train_seconds = dict(seconds)
    seconds.clear()

    conf = {n: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64) for n in variants}
    conf_b = {n: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64) for n in variants}
    band_fraction = []
    with torch.inference_mode():
        for rgb, labels in tqdm(list(load_split(data, "val", args.val, args.image_size)), desc="val",
                                disable=args.quiet, file=sys.stderr):
            gt = torch.from_numpy(labels)
            band = boundary_band(gt, args.band)
            band_fraction.append(float(band.float().mean()))
            for name, f in features(rgb).items():
                mu, sd = stats[name]
                pred = probes[name]((f.flatten(1).T - mu) / sd).argmax(1).reshape(gt.shape)
                idx = (gt * NUM_CLASSES + pred).flatten()
                conf[name] += np.bincount(idx.numpy(), minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
                bidx = idx[band.flatten()]
                conf_b[name] += np.bincount(bidx.numpy(), minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
    rows = []
    for name, ext in variants.items():
        m, per_class = miou(conf[name])
        mb, per_class_b = miou(conf_b[name])
        rows.append({"variant": name, "transforms": ext.k, "stride": ext.stride, "shift": ext.tset.shift,
                     "miou": m, "boundary_miou": mb, "per_class_iou": per_class, "per_class_boundary_iou": per_class_b,
                     "pixel_acc": float(np.trace(conf[name]) / conf[name].sum()),
                     "feature_s_per_image": (train_seconds[name] + seconds[name]) / (args.train + args.val)})
    base = next((r for r in rows if r["variant"] == "bilinear"), rows[0])
    for r in rows:
        r["delta_miou_vs_bilinear"] = r["miou"] - base["miou"]
        r["delta_boundary_miou_vs_bilinear"] = r["boundary_miou"] - base["boundary_miou"]
    if tmpdir is not None:
        tmpdir.cleanup()
    return {
        "status": "complete",
        "encoder": desc,
        "dataset": {"train": args.train, "val": args.val, "image_size": args.image_size, "seed": args.seed,
                    "classes": ["background"] + [c[0] for c in CLASSES],
                    "boundary_band_px": args.band, "boundary_pixel_fraction": float(np.mean(band_fraction))},
        "probe": {"type": "linear C->5, standardised features, full-batch L-BFGS", "iters": args.iters,
                  "weight_decay": args.weight_decay, "train_pixels": int(y.numel()),
                  "train_pixels_per_image": args.pixels},
        "rows": rows,
        "arguments": {k: v for k, v in vars(args).items()},
        "machine": machine_info(torch.device("cpu")),
    }


def print_table(data: dict[str, Any], out=sys.stdout) -> None:
    print(f"encoder: {data['encoder']}", file=out)
    d = data["dataset"]
    print(f"shapes dataset: {d['train']} train / {d['val']} val images at {d['image_size']} px; boundary band "
          f"{d['boundary_band_px']} px = {100 * d['boundary_pixel_fraction']:.1f}% of pixels", file=out)
    head = f"{'variant':<18} {'K':>3} {'stride':>6} {'mIoU':>7} {'bIoU':>7} {'dmIoU':>7} {'dbIoU':>7} {'s/img':>7}"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in data["rows"]:
        print(f"{r['variant']:<18} {r['transforms']:>3} {r['stride']:>6} {100 * r['miou']:>7.2f} "
              f"{100 * r['boundary_miou']:>7.2f} {100 * r['delta_miou_vs_bilinear']:>+7.2f} "
              f"{100 * r['delta_boundary_miou_vs_bilinear']:>+7.2f} {r['feature_s_per_image']:>7.3f}", file=out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON results")
    p.add_argument("--data", default=None, help="shapes dataset folder (made there if missing; default: a temp dir)")
    p.add_argument("--train", type=int, default=60)
    p.add_argument("--val", type=int, default=30)
    p.add_argument("--image-size", type=int, default=224, help="multiple of 16 and of the patch (224 fits 14 and 16)")
    p.add_argument("--variants", default="bilinear,tavg4,tavg8,tavg16,stride/2,stride/2+tavg8",
                   type=lambda s: [v.strip() for v in s.split(",") if v.strip()])
    p.add_argument("--shift", type=int, default=None, help="transform shift in px (default: a third of the token step)")
    p.add_argument("--encoder", default=None, help="preset/dir instead of the built-in random tiny ViT")
    p.add_argument("--random-init", action="store_true", help="with --encoder: random weights")
    p.add_argument("--pixels", type=int, default=2000, help="training pixels sampled per image")
    p.add_argument("--iters", type=int, default=200, help="L-BFGS iterations")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--band", type=int, default=3, help="boundary band half-width in px")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run: 6 train / 3 val images, 3 variants")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.train, args.val, args.iters, args.pixels = 6, 3, 30, 500
        args.variants = ["bilinear", "tavg4", "stride/2"]
    for v in args.variants:
        parse_variant(v)
    if args.image_size % 16 or args.image_size % 14:
        log.warning("--image-size %d is not a multiple of both 14 and 16", args.image_size)
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    out = Path(args.out)
    data = run(args)
    print_table(data)
    write_json_atomic(out, data)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
