#!/usr/bin/env python
"""The `make demo` job: few-shot segmentation with the embedded model, from nothing, in a few CPU minutes.

Steps (each the command a user would type, run in-process):

1. write a held-out synthetic shapes split (seed 1000; the model was trained on seed 0):
   a pool of reference images and the target images, both with exact COCO masks;
2. ``sam2-vitplug fewshot memory``: a bank of ``--shots`` references per class, encoded by the
   demo model's own ViT (preset ``dinov2_demo``) at the trunk's input size;
3. ``sam2-vitplug fewshot run --shared-backbone``: SAM2 grid proposals from the demo model
   (preset ``sam2_vit_demo``), scored by the same ViT forward, evaluated with pycocotools,
   overlays of the first ``--vis`` targets;
4. ``summary.json`` + ``summary.md``: segm and bbox AP/AR, per-class AP, seconds per image.

Everything lands in ``--out`` (default ``demo_out/``); the data is reused when it is there.

    python tools/demo_fewshot.py --out demo_out
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

MODEL = "sam2_vit_demo"
ENCODER = "dinov2_demo"
DATA_SEED = 1000  # the demo model trained on seed 0: these images are new to it


def _demo_geometry() -> tuple[int, int]:
    """(SAM2 image size, the trunk ViT's input side): the matcher encodes references at the latter."""
    from sam2_vitplug.encoders import get_preset
    from sam2_vitplug.modeling.trunk import GRID_STRIDE

    image_size = 256
    return image_size, image_size // GRID_STRIDE * get_preset(ENCODER).patch_size


def _cli(argv: list[str]) -> None:
    from sam2_vitplug.cli import main

    code = main(argv)
    if code:
        raise RuntimeError(f"`sam2-vitplug {' '.join(argv)}` failed with exit code {code} (message above)")


def run_demo(out: str | os.PathLike = "demo_out", *, shots: int = 5, refs: int = 40, targets: int = 20,
             points_per_side: int = 16, vis: int = 6, data_seed: int = DATA_SEED, device: str = "cpu",
             progress: bool = True, method: str = "vitplug") -> dict:
    """Run the whole demo into ``out`` and return the summary (also written as summary.json/.md).

    ``method`` defaults to ``vitplug``: the model card's few-shot AP was measured with it (the
    library's default, ``ntt``, reproduces the reference implementation; ``--method ntt`` here)."""
    from make_synthetic_dataset import DatasetSpec, make_dataset

    from sam2_vitplug.matching import evaluate, format_summary
    from sam2_vitplug.matching.io import atomic_write_bytes, atomic_write_json

    if shots < 1 or refs < 1 or targets < 1 or points_per_side < 1:
        raise ValueError(f"shots, refs, targets and points_per_side must be >= 1, got {shots}, {refs}, {targets}, "
                         f"{points_per_side}")
    out = Path(out)
    image_size, input_size = _demo_geometry()
    spec = DatasetSpec(train=refs, val=targets, image_size=image_size, seed=data_seed)
    data = out / "data"
    info = data / "dataset_info.json"
    if not info.is_file() or json.loads(info.read_text()).get("spec") != json.loads(json.dumps(spec.__dict__)):
        print(f"[1/4] writing {refs} reference and {targets} target synthetic images (seed {data_seed}) to {data}")
        make_dataset(data, spec, overwrite=True, progress=progress)
    else:
        print(f"[1/4] reusing the synthetic images in {data}")
    quiet = [] if progress else ["--quiet"]
    bank = out / "bank.safetensors"
    print(f"[2/4] memory bank: {shots} references per class, encoder {ENCODER} at {input_size} px")
    _cli(["fewshot", "memory", "--refs", str(data / "train" / "annotations.json"), "--images", str(data / "train" / "images"),
         "--encoder", ENCODER, "--shots", str(shots), "--input-size", str(input_size), "--set", "memory.min_size=16",
         "--method", method, "--device", device, "--out", str(bank)])
    results = out / "results.json"
    for stale in (results, out / "results_vis"):  # a fresh run, not a resume of an older one
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    for shard in out.glob("results.json.shard*"):
        shard.unlink()
    print(f"[3/4] few-shot run on {targets} targets: {MODEL} proposals ({points_per_side}x{points_per_side} points), "
          "shared-backbone scoring")
    start = time.perf_counter()
    _cli(["fewshot", "run", "--bank", str(bank), "--images", str(data / "val" / "images"),
         "--ann", str(data / "val" / "annotations.json"), "--sam2-config", MODEL, "--shared-backbone",
         "--points-per-side", str(points_per_side), "--vis", str(vis), "--device", device, "--out", str(results),
         "--method", method, *quiet])
    run_s = time.perf_counter() - start

    print("[4/4] evaluation (pycocotools) and summary")
    coco = json.loads((data / "val" / "annotations.json").read_text())
    names = {int(c["id"]): c["name"] for c in coco["categories"]}
    per_class: dict = {}
    stats = evaluate(coco, json.loads(results.read_text()), sorted(names), per_class=per_class)
    summary = {
        "model": MODEL, "encoder": ENCODER, "method": method, "shots": shots, "reference_pool": refs, "images": targets,
        "data_seed": data_seed, "image_size": image_size, "points_per_side": points_per_side, "device": device,
        "segm_AP": stats["segm"]["AP"], "segm_AP50": stats["segm"]["AP50"], "segm_AR100": stats["segm"]["AR100"],
        "bbox_AP": stats["bbox"]["AP"], "bbox_AP50": stats["bbox"]["AP50"], "bbox_AR100": stats["bbox"]["AR100"],
        "per_class_AP": {t: {names[c]: v for c, v in per_class[t].items()} for t in per_class},
        "stats": stats, "run_s": round(run_s, 2), "s_per_image": run_s / targets,
    }
    atomic_write_json(out / "summary.json", summary, indent=2)
    lines = [f"# few-shot demo: {MODEL}, {shots} shots per class, {targets} held-out synthetic targets", "",
             "```", format_summary(stats), "```", "", "| class | segm AP | bbox AP |", "|---|---|---|"]
    lines += [f"| {names[c]} | {per_class['segm'][c]:.3f} | {per_class['bbox'][c]:.3f} |" for c in sorted(names)]
    lines += ["", f"{summary['s_per_image']:.2f} s per image (the whole `fewshot run`, model build included, "
                  f"/ {targets} images, {device})", ""]
    atomic_write_bytes(out / "summary.md", "\n".join(lines).encode())
    print("\n".join(lines))
    print(f"overlays: {out / 'results_vis'}/  summary: {out / 'summary.json'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    parser.add_argument("--shots", type=int, default=5, help="references per class")
    parser.add_argument("--refs", type=int, default=40, help="reference pool images the shots are drawn from")
    parser.add_argument("--targets", type=int, default=20, help="target images to segment and evaluate")
    parser.add_argument("--points-per-side", type=int, default=16,
                        help="SAM2 prompt grid side (16: a point every 16 px at 256 px)")
    parser.add_argument("--vis", type=int, default=6, help="overlay PNGs of the first N targets")
    parser.add_argument("--device", default="cpu", help="cpu (default; the demo's numbers), cuda or mps")
    parser.add_argument("--method", choices=("vitplug", "ntt"), default="vitplug",
                        help="few-shot method (default vitplug: the model card's AP was measured with it)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_demo(args.out, shots=args.shots, refs=args.refs, targets=args.targets, points_per_side=args.points_per_side,
             vis=args.vis, device=args.device, progress=not args.quiet, method=args.method)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
