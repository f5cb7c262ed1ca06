"""``sam2-vitplug check CONFIG``: build a config (with its checkpoint, if given), run one
synthetic forward through the trunk, the image encoder and the image predictor, and print the
pyramid's shapes, parameter counts per part, timings and where the weights came from."""

from __future__ import annotations

import argparse
import json
import time

from ..devices import parse_device
from ..tables import format_table


def _count(module) -> tuple[int, int]:
    params = list(module.parameters()) if module is not None else []
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def cmd_check(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..build import build_sam2_vit, make_image_predictor

    overrides = list(args.override)
    if args.random_init:
        overrides.append("++model.image_encoder.trunk.random_init=true")
    if args.pretrained:
        from ..hydra_values import quote_value

        overrides.append(f"++model.image_encoder.trunk.pretrained={quote_value(args.pretrained)}")
    if args.image_size:
        if args.image_size % 16:
            raise ValueError(f"--image-size must be a multiple of 16, got {args.image_size}")
        overrides.append(f"++model.image_size={args.image_size}")
    device = parse_device(args.device)

    t0 = time.perf_counter()
    model = build_sam2_vit(args.config, args.sam2_ckpt, device=device, hydra_overrides_extra=overrides)
    build_s = time.perf_counter() - t0
    size = int(model.image_size)
    trunk = model.image_encoder.trunk
    torch.manual_seed(0)
    image = torch.randn(1, 3, size, size, device=device)

    def timed(fn):
        times = []
        for _ in range(max(1, args.repeats)):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return out, min(times)

    with torch.inference_mode():
        levels, trunk_s = timed(lambda: trunk(image))
        _, encoder_s = timed(lambda: model.forward_image(image))
        predictor = make_image_predictor(model)
        rgb = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
        _, set_image_s = timed(lambda: predictor.set_image(rgb))
        (masks, scores, _), predict_s = timed(
            lambda: predictor.predict(point_coords=np.array([[size // 2, size // 2]]), point_labels=np.array([1]))
        )

    vit = getattr(trunk, "vit", None)
    parts = {
        "vit": _count(vit),
        "pyramid": _count(getattr(trunk, "pyramid", None)),
        "trunk (all)": _count(trunk),
        "neck": _count(model.image_encoder.neck),
        "sam heads + memory": (_count(model)[0] - _count(model.image_encoder)[0],
                               _count(model)[1] - _count(model.image_encoder)[1]),
        "total": _count(model),
    }
    report = {
        "config": args.config,
        "device": device,
        "image_size": size,
        "encoder_type": getattr(trunk, "encoder_type", type(trunk).__name__),
        "vit_input": list(trunk.vit_input_size(size, size)) if hasattr(trunk, "vit_input_size") else None,
        "channel_list": [int(c) for c in trunk.channel_list],
        "levels": [{"stride": size // o.shape[-1], "shape": list(o.shape), "dtype": str(o.dtype).replace("torch.", "")}
                   for o in levels],
        "params": {k: {"total": v[0], "trainable": v[1]} for k, v in parts.items()},
        "seconds": {"build": build_s, "trunk": trunk_s, "image_encoder": encoder_s,
                    "predictor_set_image": set_image_s, "predict_point": predict_s},
        "mask_shape": list(masks.shape),
        "load_report": model.sam2_vitplug_load_report.summary() if model.sam2_vitplug_load_report else None,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.config}: {report['encoder_type']} trunk on {device}, image {size}px"
          + (f" (ViT runs at {report['vit_input'][0]}px)" if report["vit_input"] else ""))
    if report["load_report"]:
        print(f"SAM2 weights: {report['load_report']}")
    print(f"channel_list (low-res first): {report['channel_list']}")
    print(format_table(["stride", "shape (B x C x H x W)", "dtype"],
                       [[lv["stride"], "x".join(map(str, lv["shape"])), lv["dtype"]] for lv in report["levels"]]))
    print()
    print(format_table(["part", "params", "trainable"],
                       [[k, f"{v['total'] / 1e6:.2f}M", f"{v['trainable'] / 1e6:.2f}M"] for k, v in report["params"].items()]))
    print()
    print(format_table(["step", f"seconds (best of {args.repeats})"], [[k, f"{v:.3f}"] for k, v in report["seconds"].items()]))
    print(f"\npoint prompt -> masks {report['mask_shape']}, scores {[round(float(v), 3) for v in scores]}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``check``."""
    check = subparsers.add_parser("check", help="build a config, run one synthetic forward, print shapes, params, timing")
    check.add_argument("config", help="config name, e.g. sam2_vit_dino.yaml or configs/sam2.1/sam2.1_hiera_t.yaml")
    check.add_argument("--sam2-ckpt", default=None, help="official SAM2 checkpoint to load around the trunk")
    check.add_argument("--pretrained", default=None,
                       help="override the trunk's weights: preset, hub id, local directory or a Meta checkpoint "
                            "(DINOv2/DINOv3 .pth, I-JEPA .pth.tar; 'FILE.pth.tar#encoder' for its context encoder)")
    check.add_argument("--random-init", action="store_true", help="random trunk weights of the same architecture")
    check.add_argument("--image-size", type=int, default=None,
                       help="override model.image_size (multiple of 16; default: the config's)")
    check.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override")
    check.add_argument("--device", default=None, help="cuda, cuda:N, mps or cpu (default: the best available)")
    check.add_argument("--repeats", type=int, default=1, help="timing repeats (best is reported)")
    check.add_argument("--json", action="store_true", help="print JSON instead of tables")
    check.set_defaults(func=cmd_check)
