#!/usr/bin/env python
"""How far a reduced-precision few-shot run (bf16) agrees with the fp32 run of the same job.

Two jobs, each run end to end (bank + targets) once per dtype through the Python API that
``sam2-vitplug fewshot memory|run`` calls:

* ``demo``: the packaged demo job (``make demo``, docs/demo.md): ``sam2_vit_demo`` proposals
  (16x16 points, shared backbone), ``dinov2_demo`` bank of 5 references per class, method
  ``vitplug``, held-out synthetic targets (seed 1000; the model trained on seed 0).
* ``golden``: the NTT golden fixture (tests/data/ntt_golden): ``sam2_vit_demo`` at 1024 px, the
  fixture's tiny DINOv2, method ``ntt``, 32x32 grid, its two annotated targets.

Figures per job: segm/bbox AP of each dtype and their difference, the fraction of fp32 detections
matched by a bf16 detection (same class, mask IoU >= 0.9), mean and max |score difference| over
matched pairs (``sam2_vitplug.matching.evaluation.detection_agreement``), and seconds per image.

    python tools/fewshot_agreement.py --out bench_out/fewshot_agreement.json
    python tools/fewshot_agreement.py --jobs demo --targets 5 --out quick.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from benchlib import loadavg, machine_info, print_table, write_json_atomic  # noqa: E402

GOLDEN = REPO / "tests" / "data" / "ntt_golden"
GOLDEN_TARGETS = {11: "t_1024x1024.png", 12: "t_800x1024.png"}
MATCH_IOU = 0.9


def _run_job(bank_fn, source_fn, matcher_fn, cfg, targets: list[tuple[int, Path]], dtype: str) -> dict:
    """Bank, proposal source and predictor in ``dtype``; detections of every target, seconds."""
    from sam2_vitplug.matching import FewShotPredictor
    from sam2_vitplug.matching.io import load_rgb

    matcher = matcher_fn(dtype)
    start = time.perf_counter()
    bank = bank_fn(matcher)
    bank_s = time.perf_counter() - start
    source = source_fn(dtype, matcher)
    predictor = FewShotPredictor(bank, source, matcher, cfg)
    results, stage_s = [], {}
    start = time.perf_counter()
    for image_id, path in targets:
        results += predictor.predict(load_rgb(path), image_id)
        for key, value in {**source.timings, **predictor.timings}.items():
            stage_s[key] = stage_s.get(key, 0.0) + value
    run_s = time.perf_counter() - start
    return {"results": results, "bank_dtype": bank.dtype, "bank_s": bank_s, "s_per_image": run_s / len(targets),
            "stage_s_per_image": {k: v / len(targets) for k, v in stage_s.items()},
            "prototypes": bank.prototypes}


def demo_job(out: Path, targets: int, points_per_side: int, device: str):
    """The ``make demo`` job as (bank, source, matcher builders, config, targets, ground truth)."""
    from demo_fewshot import DATA_SEED, ENCODER, MODEL, _demo_geometry
    from make_synthetic_dataset import DatasetSpec, make_dataset

    from sam2_vitplug.build import build_sam2_vit
    from sam2_vitplug.matching import build_bank, load_config, load_matcher, sample_references
    from sam2_vitplug.matching.proposals import sam2_proposals_from_config

    image_size, input_size = _demo_geometry()
    spec = DatasetSpec(train=40, val=targets, image_size=image_size, seed=DATA_SEED)
    data = out / "data"
    info = data / "dataset_info.json"
    if not info.is_file() or json.loads(info.read_text()).get("spec") != json.loads(json.dumps(spec.__dict__)):
        make_dataset(data, spec, overwrite=True, progress=False)
    train = json.loads((data / "train" / "annotations.json").read_text())
    val = json.loads((data / "val" / "annotations.json").read_text())
    cfg = load_config({"memory": {"min_size": 16}, "proposals": {"points_per_side": points_per_side,
                                                                  "shared_backbone": True}}, method="vitplug")
    mem = cfg.memory
    refs, _ = sample_references(train, 5, mem.seed, min_size=mem.min_size, border=mem.border, sampler=str(mem.sampler))
    names = {int(c["id"]): c["name"] for c in train["categories"]}
    sam2 = build_sam2_vit(MODEL, device=device).eval()

    def bank_fn(matcher):
        return build_bank(matcher, refs, data / "train" / "images", names, context=mem.context,
                          batch_size=mem.batch_size, crop=str(mem.crop), pooling=str(mem.pooling), progress=False)

    def source_fn(dtype, matcher):
        source = sam2_proposals_from_config(sam2, cfg.proposals, dtype=dtype)
        source.check_same_weights(matcher)
        return source

    def matcher_fn(dtype):
        return load_matcher(ENCODER, device=device, input_size=input_size, dtype=dtype)

    images = [(int(im["id"]), data / "val" / "images" / im["file_name"]) for im in val["images"]]
    return bank_fn, source_fn, matcher_fn, cfg, images, val, sorted(names)


def golden_job(points_per_side: int, device: str):
    """The NTT golden case (tests/test_ntt_golden.py's bank and predictor) as the same tuple."""
    from sam2_vitplug.build import build_sam2_vit
    from sam2_vitplug.matching import build_bank, load_config, load_matcher, sample_references
    from sam2_vitplug.matching.proposals import sam2_proposals_from_config

    refs_json = json.loads((GOLDEN / "data" / "refs.json").read_text())
    targets_json = json.loads((GOLDEN / "data" / "targets.json").read_text())
    cfg = load_config({"proposals": {"points_per_side": points_per_side}})
    mem = cfg.memory
    refs, _ = sample_references(refs_json, 2, 33, min_size=mem.min_size, border=mem.border, sampler=str(mem.sampler))
    names = {int(c["id"]): c["name"] for c in refs_json["categories"]}
    sam2 = build_sam2_vit("sam2_vit_demo", device=device, hydra_overrides_extra=["++model.image_size=1024"]).eval()

    def bank_fn(matcher):
        return build_bank(matcher, refs, GOLDEN / "data" / "refs", names, context=mem.context, crop=str(mem.crop),
                          pooling=str(mem.pooling), meta={"method": cfg.method}, progress=False)

    def source_fn(dtype, matcher):
        return sam2_proposals_from_config(sam2, cfg.proposals, dtype=dtype)

    def matcher_fn(dtype):
        return load_matcher(str(GOLDEN / "dinov2_tiny128_meta.pth"), device=device, dtype=dtype)

    images = [(i, GOLDEN / "data" / "targets" / f) for i, f in sorted(GOLDEN_TARGETS.items())]
    return bank_fn, source_fn, matcher_fn, cfg, images, targets_json, sorted(names)


def compare(job, dtypes: list[str]) -> dict:
    """Run ``job`` per dtype and compare each reduced one with the first (fp32)."""
    from sam2_vitplug.matching import evaluate
    from sam2_vitplug.matching.evaluation import detection_agreement

    bank_fn, source_fn, matcher_fn, cfg, images, coco, classes = job
    runs = {}
    for dtype in dtypes:
        print(f"  {dtype}: bank + {len(images)} targets ...", file=sys.stderr)
        runs[dtype] = _run_job(bank_fn, source_fn, matcher_fn, cfg, images, dtype)
        stats = evaluate(coco, runs[dtype]["results"], classes)
        runs[dtype]["segm_AP"], runs[dtype]["bbox_AP"] = stats["segm"]["AP"], stats["bbox"]["AP"]
        runs[dtype]["segm_AP50"], runs[dtype]["bbox_AP50"] = stats["segm"]["AP50"], stats["bbox"]["AP50"]
    ref = runs[dtypes[0]]
    out = {"images": len(images), "method": str(cfg.method), "points_per_side": int(cfg.proposals.points_per_side),
           "runs": {}, "agreement": {}}
    for dtype, run in runs.items():
        out["runs"][dtype] = {k: v for k, v in run.items() if k not in ("results", "prototypes")}
        out["runs"][dtype]["detections"] = len(run["results"])
        if dtype == dtypes[0]:
            continue
        agree = detection_agreement(ref["results"], run["results"], mask_iou=MATCH_IOU)
        cos = (ref["prototypes"] * run["prototypes"]).sum(1)
        agree.update({"segm_AP_diff": run["segm_AP"] - ref["segm_AP"], "bbox_AP_diff": run["bbox_AP"] - ref["bbox_AP"],
                      "speed_ratio": run["s_per_image"] / ref["s_per_image"],
                      "prototype_cosine_min": float(cos.min())})
        out["agreement"][dtype] = agree
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="demo,golden", help="comma list: demo, golden")
    parser.add_argument("--dtype", default="fp32,bf16", help="comma list, the first is the reference (fp32)")
    parser.add_argument("--targets", type=int, default=20, help="demo: held-out synthetic targets (make demo: 20)")
    parser.add_argument("--points-per-side", type=int, default=16, help="demo grid (make demo: 16)")
    parser.add_argument("--golden-points-per-side", type=int, default=32, help="golden grid (the fixture's: 32)")
    parser.add_argument("--work", default="bench_out/fewshot_agreement_data", help="where the demo images are written")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", required=True, help="JSON output")
    args = parser.parse_args(argv)
    from sam2_vitplug.precision import check_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [check_dtype(d.strip(), args.device) for d in args.dtype.split(",") if d.strip()]
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    if len(dtypes) < 2 or dtypes[0] != "fp32":
        raise ValueError(f"--dtype must start with fp32 (the reference) and list another, got {args.dtype!r}")
    if not jobs or any(j not in ("demo", "golden") for j in jobs):
        raise ValueError(f"--jobs must list demo and/or golden, got {args.jobs!r}")
    if args.targets < 1 or args.points_per_side < 1 or args.golden_points_per_side < 1:
        raise ValueError("--targets, --points-per-side and --golden-points-per-side must be >= 1")
    report = {"args": vars(args), "machine": machine_info(args.device), "match_mask_iou": MATCH_IOU, "jobs": {}}
    for name in jobs:
        print(f"{name} job ...", file=sys.stderr)
        job = demo_job(Path(args.work), args.targets, args.points_per_side, args.device) if name == "demo" \
            else golden_job(args.golden_points_per_side, args.device)
        report["jobs"][name] = compare(job, dtypes)
    report["loadavg_end"] = loadavg()
    header = ["job", "dtype", "dets", "segm AP", "bbox AP", "d segm AP", "d bbox AP", "matched", "mean |ds|",
              "max |ds|", "s/image", "speed"]
    rows = []
    for name, res in report["jobs"].items():
        for dtype, run in res["runs"].items():
            a = res["agreement"].get(dtype)
            rows.append([name, dtype, run["detections"], f"{run['segm_AP']:.4f}", f"{run['bbox_AP']:.4f}",
                         "-" if a is None else f"{a['segm_AP_diff']:+.4f}", "-" if a is None else f"{a['bbox_AP_diff']:+.4f}",
                         "-" if a is None else f"{a['matched_fraction']:.3f}",
                         "-" if a is None else f"{a['mean_abs_score_diff']:.4f}",
                         "-" if a is None else f"{a['max_abs_score_diff']:.4f}", f"{run['s_per_image']:.2f}",
                         "-" if a is None else f"{a['speed_ratio']:.2f}x"])
    print_table(header, rows)
    print(f"matched: fraction of fp32 detections with a same-class detection of mask IoU >= {MATCH_IOU}; "
          f"|ds| over matched pairs; load average {report['machine']['loadavg_start']} -> {report['loadavg_end']}")
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
