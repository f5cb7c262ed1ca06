"""sam2-vitplug: Hugging Face ViTs (DINOv2, DINOv3, I-JEPA, ...) as SAM 2's image encoder, with
few-shot segmentation, high-resolution features and segmentation heads on frozen ViTs.
Run `sam2-vitplug COMMAND --help` for a command's flags."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from importlib import metadata, resources
from typing import Sequence

logger = logging.getLogger(__name__)

# Subcommands that live next to their code: each module defines
# ``register(subparsers: argparse._SubParsersAction) -> None`` which adds its parser(s) and
# sets ``func`` (a callable taking the parsed args and returning an exit code).
SUBCOMMAND_MODULES: tuple[str, ...] = ("sam2_vitplug.matching.cli", "sam2_vitplug.heads.cli", "training_ext.export_cli",
                                       "sam2_vitplug.features_cli", "sam2_vitplug.app.cli")


from .devices import default_device, parse_device  # noqa: E402,F401 - re-exported: subcommands import it from here


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _config_names() -> dict[str, list[str]]:
    ours = sorted(p.name for p in resources.files("sam2_vitplug.configs.sam2").iterdir()
                  if p.name.endswith(".yaml"))
    upstream_root = resources.files("sam2") / "configs"
    upstream = sorted(f"configs/{d.name}/{p.name}" for d in upstream_root.iterdir() if d.is_dir()
                      for p in d.iterdir() if p.name.endswith(".yaml"))
    return {"sam2_vitplug": ours, "sam2 (upstream)": upstream}


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .encoders import get_family, list_encoder_types, list_presets
    from .encoders.registry import ENTRY_POINT_GROUP
    from .encoders.sources import META_FORMATS_INFO
    from .sam2_presets import SAM2_PRESETS

    owners = {ep.name: (ep.dist.name if ep.dist else "?") for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    info = {
        "versions": {d: _version(d) for d in ("sam2-vitplug", "sam2", "torch", "transformers", "hydra-core")},
        "device": default_device(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "encoder_types": [
            {"name": n, "description": get_family(n).description, "from": owners.get(n, "?"),
             "presets": len(get_family(n).presets)}
            for n in list_encoder_types()
        ],
        "presets": [
            {"name": p.name, "type": p.encoder_type, "hf_id": p.hf_id or f"(packaged: {p.package_file})",
             "patch": p.patch_size,
             "width": p.hidden_size, "blocks": p.arch.get("num_hidden_layers"),
             "registers": p.arch.get("num_register_tokens", 0), "native_px": p.native_size}
            for p in list_presets()
        ],
        "models": [{"name": m.name, "config": m.config, "weights": m.weights, "summary": m.summary}
                   for m in SAM2_PRESETS.values()],
        "configs": _config_names(),
        "meta_checkpoints": META_FORMATS_INFO,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(f"device: {info['device']}" + (f" (CUDA {info['cuda']})" if info["cuda"] else ""))
    print("\nencoder types (entry-point group sam2_vitplug.encoders):")
    print(_table([[e["name"], e["from"], e["presets"], e["description"]] for e in info["encoder_types"]],
                 ["type", "from", "presets", "description"]))
    print("\npresets:")
    print(_table([[p["name"], p["type"], p["patch"], p["width"], p["blocks"], p["registers"], p["native_px"], p["hf_id"]]
                  for p in info["presets"]], ["name", "type", "patch", "width", "blocks", "registers", "native px", "hub id"]))
    print(f"\nother encoder sources: hub ids, local directories (config.json + weights), {META_FORMATS_INFO}")
    print("\npackaged SAM2 models (build_sam2_vit(name) loads config + weights; --sam2-config name):")
    print(_table([[m["name"], m["config"], m["summary"]] for m in info["models"]], ["name", "config", "what"]))
    for source, names in info["configs"].items():
        print(f"\nconfigs from {source} (pass to build_sam2 by name):")
        print("  " + "\n  ".join(names))
    return 0


def _count(module) -> tuple[int, int]:
    params = list(module.parameters()) if module is not None else []
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def cmd_check(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .build import build_sam2_vit, make_image_predictor

    overrides = list(args.override)
    if args.random_init:
        overrides.append("++model.image_encoder.trunk.random_init=true")
    if args.pretrained:
        from .hydra_values import quote_value

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
    print(_table([[lv["stride"], "x".join(map(str, lv["shape"])), lv["dtype"]] for lv in report["levels"]],
                 ["stride", "shape (B x C x H x W)", "dtype"]))
    print()
    print(_table([[k, f"{v['total'] / 1e6:.2f}M", f"{v['trainable'] / 1e6:.2f}M"] for k, v in report["params"].items()],
                 ["part", "params", "trainable"]))
    print()
    print(_table([[k, f"{v:.3f}"] for k, v in report["seconds"].items()], ["step", "seconds (best of %d)" % args.repeats]))
    print(f"\npoint prompt -> masks {report['mask_shape']}, scores {[round(float(v), 3) for v in scores]}")
    return 0


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's help ends with its default (like ``ArgumentDefaultsHelpFormatter``),
    unless the text already states it; descriptions keep their line breaks; 120 columns so a
    subcommand's one-line summary stays on one line."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 30,
                 width: int | None = None) -> None:
        import shutil

        super().__init__(prog, indent_increment, max_help_position,
                         width or max(120, shutil.get_terminal_size((120, 24)).columns - 2))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)".strip()
        default = action.default
        if isinstance(default, bool) or default is None or default == []:
            shown = "off" if default is False or action.nargs == 0 else "none"
        elif isinstance(default, (list, tuple)):
            shown = " ".join(map(str, default))
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})".strip()


class HelpParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help shows defaults; subcommand parsers inherit it
    (``add_subparsers`` builds them with ``type(self)``), so every command gets the same help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        if kwargs.get("help") is None and kwargs.get("help", "") is not argparse.SUPPRESS:
            kwargs["help"] = " "  # an empty help hides the line; the formatter appends the default
        return super().add_argument(*args, **kwargs)

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        plain = group.add_argument

        def add_argument(*a, **kw):
            if kw.get("help") is None:
                kw["help"] = " "
            return plain(*a, **kw)

        group.add_argument = add_argument  # type: ignore[method-assign]
        return group


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = HelpParser(prog="sam2-vitplug", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sam2-vitplug {__version__}",
                        help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level; show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    info = sub.add_parser("info", help="installed encoder types, presets, configs, versions and device")
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    info.set_defaults(func=cmd_info)

    check = sub.add_parser("check", help="build a config, run one synthetic forward, print shapes, params, timing")
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

    from importlib import import_module

    for module in SUBCOMMAND_MODULES:
        import_module(module).register(sub)
    return parser


USER_ERRORS = (ValueError, KeyError, FileNotFoundError, OSError, NotImplementedError)


def _user_error(err: BaseException) -> BaseException | None:
    """The user-facing error inside ``err`` (Hydra wraps constructor errors), or None."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, USER_ERRORS):
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # upstream sam2 calls the deprecated torch.jit.script at import; not actionable for users
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
    try:
        if getattr(args, "device", None) is not None:  # every command's --device, checked before any work
            args.device = parse_device(args.device)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - reduced to one line when it is the user's input
        cause = _user_error(err)
        if cause is None or args.verbose:
            raise
        message = cause.args[0] if isinstance(cause, KeyError) and cause.args else cause
        print(f"sam2-vitplug: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
