"""``sam2-vitplug seg train|eval|predict``: semantic segmentation heads on frozen ViTs."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..devices import parse_device
from ..encoders.sources import ENCODER_SOURCES_HELP
from ..precision import DTYPE_HELP, DTYPES

logger = logging.getLogger(__name__)


def _device(args: argparse.Namespace) -> str:
    return parse_device(args.device)


def _inference_dtype(args: argparse.Namespace, device: str) -> str:
    """``--dtype`` (default fp32, the exact path), or the deprecated ``--amp`` spelling of it,
    checked against the device before any model is built."""
    import sys

    from ..precision import check_dtype, parse_dtype

    dtype = args.dtype
    if args.amp is not None:
        import torch

        from ..heads.train import amp_dtype

        print("note: --amp is deprecated for seg eval/predict; use --dtype", file=sys.stderr)
        legacy = amp_dtype(args.amp, torch.device(device))
        legacy = "fp32" if legacy is None else parse_dtype(legacy)
        if dtype is not None and parse_dtype(dtype) != legacy:
            raise ValueError(f"--dtype {dtype} and --amp {args.amp} disagree; pass --dtype only")
        dtype = legacy
    return check_dtype(dtype, device)


def _output_folder(path: str, flag: str = "--out") -> Path:
    """``path`` as an output folder; an existing file there is a mistake, not a folder."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} '{out}' is an existing file; pass a folder (it is created if missing)")
    return out


def _class_names(spec: str | None) -> list[str] | None:
    if spec is None:
        return None
    path = Path(spec)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [s.strip() for s in spec.split(",")]


def cmd_train(args: argparse.Namespace) -> int:
    from ..heads.model import SegModelConfig, head_names
    from ..heads.train import TrainConfig, train

    if args.head not in head_names():
        raise ValueError(f"--head must be one of {', '.join(head_names())}, got {args.head!r}")
    model_cfg = SegModelConfig(head=args.head, encoder=args.encoder, num_classes=args.num_classes,
                               image_size=args.image_size, encoder_type=args.encoder_type,
                               random_init=args.random_init, head_overrides=list(args.head_opt),
                               class_names=_class_names(args.class_names))
    cfg = TrainConfig(
        image_paths=args.image_paths, mask_paths=args.mask_paths, checkpoint_dir=args.checkpoint_dir,
        val_image_paths=args.val_image_paths, val_mask_paths=args.val_mask_paths, validate=args.validate,
        val_fraction=args.val_fraction, epochs=args.epochs, warmup_epochs=args.warmup_epochs, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, batch_size=args.batch_size,
        num_workers=args.num_workers, grad_clip=args.grad_clip, amp=args.amp, seed=args.seed,
        log_interval=args.log_interval, save_interval=args.save_interval, augment=args.augment,
        cache_features=args.cache_features, resume_checkpoint=args.resume_checkpoint, device=_device(args),
        progress=not args.no_progress, max_steps_per_epoch=args.max_steps_per_epoch, overwrite=args.overwrite,
    )
    entry = train(model_cfg, cfg)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: v for k, v in entry.items() if k != "per_class_iou"}
        print(f"trained {args.head} for {cfg.epochs} epochs -> {cfg.checkpoint_dir}: {json.dumps(summary)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..heads.data import pair_paths, validate_pairs
    from ..heads.infer import evaluate
    from ..heads.metrics import metrics_from_confusion, write_json_atomic
    from ..heads.model import load_seg_model, read_checkpoint

    device = _device(args)
    dtype = _inference_dtype(args, device)
    ckpt = read_checkpoint(args.checkpoint)
    num_classes = ckpt["config"]["num_classes"]
    pairs = pair_paths(args.image_paths, args.mask_paths)
    if int(validate_pairs(pairs, num_classes).sum()) == 0:
        raise ValueError(f"every pixel of the {len(pairs)} masks (first: '{pairs[0][1]}') is 255 (ignore): there is "
                         "nothing to evaluate; check that the masks hold class ids")
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("eval_metrics.json")
    if out.is_dir():
        raise ValueError(f"--out '{out}' is an existing folder; pass a .json file name")
    model = load_seg_model(args.checkpoint, device=device, ckpt=ckpt)
    conf = evaluate(model, pairs, mode=args.mode, dtype=dtype, progress=not args.no_progress)
    result = {"checkpoint": str(args.checkpoint), "images": len(pairs), "mode": args.mode, "dtype": dtype,
              **metrics_from_confusion(conf, model.config.names), "confusion": conf.tolist()}
    write_json_atomic(result, out)
    print(f"mIoU {result['mIoU']:.4f}  pixel accuracy {result['pixel_accuracy']:.4f}  ({len(pairs)} images, {dtype}) "
          f"-> {out}")
    for name, iou in result["per_class_iou"].items():
        print(f"  {name:<20} {'n/a' if iou is None else f'{iou:.4f}'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..heads.infer import collect_inputs, predict_images, predict_video
    from ..heads.metrics import write_json_atomic
    from ..heads.model import load_seg_model, read_checkpoint

    ckpt = read_checkpoint(args.checkpoint)
    kind, files = collect_inputs(args.input)
    out = _output_folder(args.out)
    device = _device(args)
    dtype = _inference_dtype(args, device)
    model = load_seg_model(args.checkpoint, device=device, ckpt=ckpt)
    background = None if args.background_class < 0 else args.background_class
    if background is not None and background >= model.config.num_classes:
        raise ValueError(f"--background-class {background} is not a class of this checkpoint (0.."
                         f"{model.config.num_classes - 1}); pass -1 to paint every class")
    if kind == "video":
        result = predict_video(model, files[0], out, mode=args.mode, dtype=dtype,
                               progress=not args.no_progress, max_frames=args.max_frames, background=background)
    else:
        result = predict_images(model, files, out, mode=args.mode, dtype=dtype, progress=not args.no_progress,
                                background=background)
    result.update(input=str(args.input), device=device, mode=args.mode)
    write_json_atomic(result, out / "predict.json")
    print(f"{kind}: {result.get('images', result.get('frames'))} in {result['seconds']:.2f} s model time "
          f"= {result['fps']:.2f} FPS on {device} -> {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``seg`` with its ``train``, ``eval`` and ``predict`` subcommands."""
    seg = subparsers.add_parser("seg", help="semantic segmentation heads on frozen ViTs (train, eval, predict)")
    sub = seg.add_subparsers(dest="seg_command", required=True)

    def common(p: argparse.ArgumentParser, training: bool = False) -> None:
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
        if training:
            p.add_argument("--amp", default="auto", help="auto (bf16/fp16 on CUDA, off elsewhere), off, bf16, fp16")
        else:
            p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help=DTYPE_HELP)
            p.add_argument("--amp", default=None, help="deprecated spelling of --dtype (auto: bf16/fp16 on CUDA)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    t = sub.add_parser("train", help="train a head on a frozen encoder (a rerun of the same command resumes)")
    t.add_argument("--head", required=True, help="linear, upernet or mask2former (configs/heads/<name>.yaml)")
    t.add_argument("--encoder", required=True, help=ENCODER_SOURCES_HELP)
    t.add_argument("--encoder-type", default=None, help="expected encoder family (default: inferred)")
    t.add_argument("--random-init", action="store_true", help="random encoder weights (tests, benchmarks)")
    t.add_argument("--num-classes", type=int, required=True, help="classes in the masks (255 = ignore)")
    t.add_argument("--class-names", default=None, help="comma-separated names or a file with one name per line "
                   "(default: class_0, class_1, ...)")
    t.add_argument("--image-paths", nargs="+", required=True, help="glob(s), folder(s) or files; quote globs")
    t.add_argument("--mask-paths", nargs="+", required=True,
                   help="class-id PNGs, paired with images by file name (a.jpg + a.png)")
    t.add_argument("--val-image-paths", nargs="+", default=None, help="validation images (default: none)")
    t.add_argument("--val-mask-paths", nargs="+", default=None, help="validation masks, paired by file name")
    t.add_argument("--validate", action="store_true",
                   help="validate each epoch (on --val-* paths, else on a held-out --val-fraction)")
    t.add_argument("--val-fraction", type=float, default=0.1, help="share held out by --validate without --val-*")
    t.add_argument("--image-size", type=int, default=512, help="training images are resized to this square")
    t.add_argument("--batch-size", type=int, default=8, help="per process")
    t.add_argument("--epochs", type=int, default=100, help="epochs in all (a resumed run continues to this)")
    t.add_argument("--warmup-epochs", type=int, default=None,
                   help="linear LR warmup epochs (default: a tenth of --epochs, at most 10)")
    t.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate")
    t.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    t.add_argument("--schedule", choices=("cosine", "poly"), default="cosine", help="decay after the warmup")
    t.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    t.add_argument("--num-workers", type=int, default=4, help="data-loading processes")
    t.add_argument("--seed", type=int, default=0, help="seeds the head, the data order and the augmentation")
    t.add_argument("--log-interval", type=int, default=10, help="steps between loss logs")
    t.add_argument("--save-interval", type=int, default=10, help="epochs between epoch_N.pt checkpoints")
    t.add_argument("--checkpoint-dir", default="checkpoints",
                   help="run folder: a rerun with the same settings resumes from its last.pt, other settings are "
                        "refused (see --overwrite)")
    t.add_argument("--overwrite", action="store_true",
                   help="start afresh in --checkpoint-dir, removing the earlier run's checkpoints and logs")
    t.add_argument("--resume-checkpoint", default=None,
                   help="continue from this last.pt (default: the last.pt in --checkpoint-dir, if the settings match)")
    t.add_argument("--augment", action="store_true", help="random scale/crop/flip")
    t.add_argument("--cache-features", action="store_true",
                   help="compute the frozen encoder's features once (needs no --augment)")
    t.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (quick runs; default: "
                   "all)")
    t.add_argument("--head-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="override the head YAML, e.g. head.channels=256 or backbone.feature_layers=4")
    common(t, training=True)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="mIoU / per-class IoU / pixel accuracy of a checkpoint at full resolution")
    e.add_argument("--checkpoint", required=True, help="best.pt, last.pt or epoch_N.pt of a seg train run")
    e.add_argument("--image-paths", nargs="+", required=True, help="glob(s), folder(s) or files; quote globs")
    e.add_argument("--mask-paths", nargs="+", required=True, help="class-id PNGs, paired with images by file name")
    e.add_argument("--mode", choices=("resize", "slide"), default="resize",
                   help="resize (keep aspect, pad to 16) or sliding window")
    e.add_argument("--out", default=None, help="JSON path (default: eval_metrics.json next to the checkpoint)")
    common(e)
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="coloured overlays for an image, a folder or a video")
    p.add_argument("--checkpoint", required=True, help="best.pt, last.pt or epoch_N.pt of a seg train run")
    p.add_argument("--input", required=True, help="image, folder of images, or video (.mp4, .avi, ...)")
    p.add_argument("--out", required=True, help="output folder (<stem>_mask.png, <stem>_overlay.png, predict.json)")
    p.add_argument("--mode", choices=("resize", "slide"), default="resize",
                   help="resize (keep aspect, pad to 16) or sliding window")
    p.add_argument("--background-class", type=int, default=0,
                   help="class left unpainted in the overlays (-1 paints every class)")
    p.add_argument("--max-frames", type=int, default=None, help="stop a video after this many frames (default: all)")
    common(p)
    p.set_defaults(func=cmd_predict)
