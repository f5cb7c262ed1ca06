"""``sam2-vitplug export``: a trainer checkpoint -> a model-only checkpoint for ``build_sam2``."""

from __future__ import annotations

import argparse

from ..devices import parse_device


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand."""
    p = subparsers.add_parser("export", help="write a clean model-only checkpoint from a training_ext run")
    p.add_argument("checkpoint", help="the trainer's checkpoint, e.g. sam2_logs/<run>/checkpoints/checkpoint.pt")
    p.add_argument("--out", required=True, help="output .pt (for build_sam2) or .safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--verify", action="store_true", help="rebuild the model with build_sam2 from the export")
    p.add_argument("--device", default=None, help="device for --verify (default: the best available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from training_ext.export import build_exported, export_checkpoint

    device = parse_device(args.device) if args.verify else None  # a bad --device fails before anything is written
    meta = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {meta['tensors']} tensors, steps {meta['steps']}")
    info = meta["build_sam2"]
    if info:
        overrides = ", ".join(repr(o) for o in info["overrides"])
        print(f"load with: build_sam2({info['config']!r}, ckpt_path={args.out!r}, hydra_overrides_extra=[{overrides}])")
    if args.verify:
        model = build_exported(args.out, device=device)
        print(f"verified: build_sam2 loaded {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters strictly")
    return 0
