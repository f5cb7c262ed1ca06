"""``sam2-vitplug fewshot memory|run|eval``: build a memory bank, segment targets, evaluate."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..devices import default_device
from ..encoders.sources import ENCODER_SOURCES_HELP
from ..precision import DTYPE_HELP, DTYPES, check_dtype
from ..sam2_presets import build_named_sam2

logger = logging.getLogger(__name__)


def _device(args: argparse.Namespace) -> str:
    return args.device or default_device()


def _build_sam2(args: argparse.Namespace, device: str):
    return build_named_sam2(args.sam2_config, args.sam2_ckpt, device, args.sam2_override)


def cmd_memory(args: argparse.Namespace) -> int:
    from ..matching import build_bank, load_config, load_matcher, sample_references, save_bank, sam2_box_prompter
    from ..matching.coco_checks import check_image_sizes
    from ..matching.io import load_coco_json

    cfg = load_config(args.set, method=args.method)
    device = _device(args)
    dtype = check_dtype(args.dtype, device)  # before any file is read or model built
    mem = cfg.memory
    shots = args.shots if args.shots is not None else mem.shots
    seed = args.seed if args.seed is not None else mem.seed
    if args.input_size is not None and args.input_size <= 0:
        raise ValueError(f"--input-size {args.input_size} must be positive (518 for patch 14, 512 for patch 16)")
    coco = load_coco_json(args.refs)
    if not Path(args.images).is_dir():
        raise FileNotFoundError(f"--images '{args.images}' is not a directory")
    refs, report = sample_references(coco, shots, seed, category_ids=args.classes, min_size=mem.min_size,
                                     border=mem.border, sampler=str(mem.sampler))
    by_id = {int(im["id"]): im for im in coco["images"]}
    check_image_sizes([by_id[i] for i in sorted({r.image_id for r in refs})], args.images)  # before any model
    print(f"references: {report.summary()}")
    prompter = None
    if any(r.segmentation is None for r in refs):
        from ..build import make_image_predictor

        prompter = sam2_box_prompter(make_image_predictor(_build_sam2(args, device)), dtype=dtype)
    matcher = load_matcher(args.encoder, device=device, input_size=args.input_size or mem.input_size,
                           random_init=args.random_init, dtype=dtype)
    names = {int(c["id"]): c.get("name", str(c["id"])) for c in coco["categories"]}
    bank = build_bank(matcher, refs, args.images, names, context=mem.context, batch_size=mem.batch_size,
                      box_prompter=prompter, crop=str(mem.crop), pooling=str(mem.pooling),
                      meta={"shots": shots, "seed": seed, "refs": str(args.refs),
                            "sampler": str(mem.sampler), "skipped": dict(report.skipped)})
    save_bank(bank, args.out)
    print(f"wrote {args.out}: {len(bank.class_ids)} classes, {bank.instances.shape[0]} instances, "
          f"dim {bank.instances.shape[1]}, encoder {matcher.identity} at {matcher.input_size}px, method {cfg.method}, "
          f"{dtype}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..matching import FewShotPredictor, GroundTruthProposals, evaluate, format_summary, load_bank
    from ..matching import load_config, load_matcher
    from ..matching.config import check_run_config
    from ..matching.proposals import adaptive_from_config, sam2_proposals_from_config
    from ..matching.io import atomic_write_json, load_coco_json
    from ..matching.run_record import run_settings
    from ..matching.runner import dist_info, images_from_coco, images_from_folder, run_images

    overrides = list(args.set)
    for flag, key in (("source", "proposals.source"), ("points_per_side", "proposals.points_per_side"),
                      ("iou_thr", "proposals.iou_thr"), ("top_k", "output.top_k")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.shared_backbone:
        overrides.append("proposals.shared_backbone=true")
    if args.engine is not None:
        overrides.append(f"proposals.engine={args.engine}")
    if args.adaptive:
        overrides.append("proposals.adaptive.enabled=true")
    if args.hr_transforms is not None:
        overrides.append(f"scoring.hr_transforms={args.hr_transforms}")
    cfg = load_config(overrides, method=args.method)
    check_run_config(cfg)
    if args.vis < 0:
        raise ValueError(f"--vis {args.vis} must be >= 0 (the number of images to draw overlays of)")
    if args.vis_gt and not args.ann:
        raise ValueError("--vis-gt draws the ground truth and needs --ann (the COCO json of the target images)")
    if args.eval and not args.ann:
        raise ValueError("--eval needs --ann (the COCO json of the target images)")
    if not Path(args.images).is_dir():
        raise FileNotFoundError(f"--images '{args.images}' is not a directory")
    coco = load_coco_json(args.ann) if args.ann else None
    images = images_from_coco(coco) if coco else images_from_folder(args.images)
    if not images:
        raise ValueError(f"--ann '{args.ann}' lists no images" if coco else
                         f"--images '{args.images}' holds no image files (.jpg, .png, ...); check the folder")
    if coco:
        from ..matching.coco_checks import check_image_sizes

        check_image_sizes(coco["images"], args.images, skip_missing=True)  # masks are drawn on the json's frame
    if cfg.proposals.source == "ground_truth" and coco is None:
        raise ValueError("proposals.source=ground_truth needs --ann")
    if cfg.proposals.source == "sam2":
        adaptive_from_config(cfg.proposals)  # bad engine / adaptive settings fail before any work
    bank = load_bank(args.bank)
    bank.check_method(cfg.method)  # before any model is built
    device = _device(args)
    dtype = check_dtype(args.dtype, device)
    info = dist_info(device)
    mismatch = bank.dtype_warning(dtype)
    if mismatch and info.rank == 0:
        print(mismatch, file=sys.stderr)
    if device.startswith("cuda") and info.world_size > 1:
        import torch

        torch.cuda.set_device(info.rank % torch.cuda.device_count())
    encoder = args.encoder or bank.encoder
    random_init = encoder.endswith("#random")
    matcher = load_matcher(encoder.removesuffix("#random"), device=device, input_size=int(bank.meta["input_size"]),
                           random_init=random_init, dtype=dtype)
    bank.check_encoder(matcher)
    sam2_model = None
    if cfg.proposals.source == "ground_truth":
        source = GroundTruthProposals(coco)
    elif cfg.proposals.source == "sam2":
        p = cfg.proposals
        sam2_model = _build_sam2(args, device)
        source = sam2_proposals_from_config(sam2_model, p, dtype=dtype)
        if p.shared_backbone:
            source.check_same_weights(matcher)
    else:
        raise ValueError(f"proposals.source must be sam2 or ground_truth, got {cfg.proposals.source!r}")
    predictor = FewShotPredictor(bank, source, matcher, cfg)
    settings = run_settings(cfg, images, matcher, sam2_model, bank=args.bank, ann=args.ann,
                            sam2_config=args.sam2_config, sam2_overrides=args.sam2_override, extra={"dtype": dtype})
    results = run_images(predictor.predict, images, args.images, args.out, info=info, progress=not args.quiet,
                         settings=settings, overwrite=args.overwrite)
    if info.rank != 0:
        return 0
    print(f"wrote {args.out}: {len(results)} detections on {len(images)} images")
    if args.vis:
        from ..matching.vis import write_overlays

        vis_dir = Path(args.out).with_suffix("").as_posix() + "_vis"
        count = write_overlays(vis_dir, images[: args.vis], args.images, results,
                               dict(zip(bank.class_ids, bank.class_names)), min_score=args.vis_min_score,
                               annotations=coco["annotations"] if args.vis_gt else None)
        print(f"overlays of {count} images in {vis_dir}/")
    if args.eval:
        stats = evaluate(coco, results, bank.class_ids)
        print(format_summary(stats))
        eval_out = args.eval_out or str(Path(args.out).with_suffix("")) + ".eval.json"
        atomic_write_json(eval_out, stats, indent=2)
        print(f"wrote {eval_out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..matching import evaluate, format_summary, load_bank
    from ..matching.coco_checks import check_results
    from ..matching.io import atomic_write_json, load_coco_json, read_json

    coco = load_coco_json(args.ann)
    path = Path(args.results)
    results = read_json(path, "results file")
    iou_types = check_results(results, coco, path)
    if iou_types == ("bbox",):
        print(f"note: the results in '{path}' carry no segmentation; evaluating bbox only")
    classes = args.classes or (load_bank(args.bank).class_ids if args.bank else None)
    stats = evaluate(coco, results, classes, iou_types=iou_types)
    print(format_summary(stats))
    if args.out:
        atomic_write_json(args.out, stats, indent=2)
        print(f"wrote {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshot`` with its ``memory``, ``run`` and ``eval`` subcommands."""
    fewshot = subparsers.add_parser("fewshot", help="few-shot reference segmentation (memory bank, run, eval)",
                                    description=__doc__)
    sub = fewshot.add_subparsers(dest="fewshot_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
        p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help=DTYPE_HELP)
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override configs/matching/fewshot.yaml (after the --method preset)")
        p.add_argument("--method", choices=("ntt", "vitplug"), default=None,
                       help="preset: ntt (default; the No Time to Train reference's choices, "
                            "configs/matching/ntt.yaml) or vitplug (configs/matching/vitplug.yaml)")
        p.add_argument("--sam2-config", default=None, help="SAM2 config (ours, e.g. sam2_vit_dino.yaml, or upstream)")
        p.add_argument("--sam2-ckpt", default=None, help="SAM2 checkpoint for --sam2-config")
        p.add_argument("--sam2-override", action="append", default=[], metavar="KEY=VALUE",
                       help="extra Hydra override for the SAM2 config")

    mem = sub.add_parser("memory", help="build a memory bank from reference images")
    mem.add_argument("--refs", required=True, help="COCO instances json of the reference images")
    mem.add_argument("--images", required=True, help="folder of the reference images")
    mem.add_argument("--shots", type=int, default=None, help="references per class (config: memory.shots)")
    mem.add_argument("--seed", type=int, default=None, help="sampler seed (config: memory.seed)")
    mem.add_argument("--encoder", required=True, help=ENCODER_SOURCES_HELP)
    mem.add_argument("--input-size", type=int, default=None, help="matcher input side (518 patch 14, 512 patch 16)")
    mem.add_argument("--classes", type=int, nargs="*", default=None, help="category ids (default: all)")
    mem.add_argument("--random-init", action="store_true", help="random encoder weights (benchmarks, tests)")
    mem.add_argument("--out", required=True, help="bank file (.safetensors)")
    common(mem)
    mem.set_defaults(func=cmd_memory)

    run = sub.add_parser("run", help="segment target images with a memory bank")
    run.add_argument("--bank", required=True, help="bank from `fewshot memory`")
    run.add_argument("--images", required=True, help="folder of target images")
    run.add_argument("--ann", default=None, help="COCO json of the targets (image list, --eval, ground_truth)")
    run.add_argument("--encoder", default=None, help="matcher encoder (default: the bank's)")
    run.add_argument("--proposals", dest="source", choices=("sam2", "ground_truth"), default=None)
    run.add_argument("--points-per-side", type=int, default=None)
    run.add_argument("--iou-thr", type=float, default=None)
    run.add_argument("--top-k", type=int, default=None)
    run.add_argument("--shared-backbone", action="store_true", help="SAM2's ViT tokens also serve scoring")
    run.add_argument("--engine", choices=("fast", "upstream"), default=None,
                     help="SAM2 prompt decoding: fast (exact reordered decoder, default) or upstream's "
                          "(config: proposals.engine)")
    run.add_argument("--adaptive", action="store_true",
                     help="adaptive prompting: coarse grid first, then only uncovered grid points "
                          "(config: proposals.adaptive.*)")
    run.add_argument("--hr-transforms", type=int, default=None, metavar="K",
                     help="pool target features from K-transform-averaged maps at the low-res mask grid "
                          "(config: scoring.hr_transforms; 0 = off)")
    run.add_argument("--out", required=True, help="COCO results json")
    run.add_argument("--overwrite", action="store_true",
                     help="drop the shards of an earlier, interrupted run on --out instead of resuming them "
                          "(a rerun with the same settings resumes; other settings are refused)")
    run.add_argument("--eval", action="store_true", help="evaluate against --ann when done")
    run.add_argument("--eval-out", default=None, help="summary JSON (default: <out>.eval.json)")
    run.add_argument("--vis", type=int, default=0, metavar="N",
                     help="write overlay PNGs of the first N images to <out without .json>_vis/ (default 0)")
    run.add_argument("--vis-min-score", type=float, default=0.3, metavar="S",
                     help="overlays draw detections scoring at least S (default 0.3; results keep all)")
    run.add_argument("--vis-gt", action="store_true",
                     help="overlays show the ground truth of --ann (bank classes) beside the prediction")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    common(run)
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser("eval", help="COCO bbox + segm evaluation of a results json")
    ev.add_argument("--ann", required=True, help="ground-truth COCO json")
    ev.add_argument("--results", required=True, help="COCO results json")
    ev.add_argument("--bank", default=None, help="restrict to this bank's classes")
    ev.add_argument("--classes", type=int, nargs="*", default=None, help="restrict to these category ids")
    ev.add_argument("--out", default=None, help="write the summary JSON here")
    ev.set_defaults(func=cmd_eval)
