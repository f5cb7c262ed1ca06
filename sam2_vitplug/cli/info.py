"""``sam2-vitplug info``: what is installed (encoder types, presets, packaged models, configs,
versions, device), as tables or JSON."""

from __future__ import annotations

import argparse
import json
from importlib import metadata, resources

from ..tables import format_table


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


def collect_info() -> dict:
    """Everything ``info`` shows, as a JSON-ready dict."""
    import torch

    from ..devices import default_device
    from ..encoders import get_family, list_encoder_types, list_presets
    from ..encoders.registry import ENTRY_POINT_GROUP
    from ..encoders.sources import META_FORMATS_INFO
    from ..precision import cpu_fast_bf16
    from ..sam2_presets import SAM2_PRESETS
    from . import command_owners

    owners = {ep.name: (ep.dist.name if ep.dist else "?") for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return {
        "versions": {d: _version(d) for d in ("sam2-vitplug", "sam2", "torch", "transformers", "hydra-core")},
        "device": default_device(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cpu_fast_bf16": cpu_fast_bf16(),
        "commands": command_owners(),
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


def cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(f"device: {info['device']}" + (f" (CUDA {info['cuda']})" if info["cuda"] else "")
          + f"; CPU bf16 matmul: {'native (AVX512-BF16/AMX)' if info['cpu_fast_bf16'] else 'emulated'}")
    print("\ncommands (built in, or from the entry-point group sam2_vitplug.commands):")
    print(format_table(["command", "from"], sorted(info["commands"].items())))
    print("\nencoder types (entry-point group sam2_vitplug.encoders):")
    print(format_table(["type", "from", "presets", "description"],
                       [[e["name"], e["from"], e["presets"], e["description"]] for e in info["encoder_types"]]))
    print("\npresets:")
    print(format_table(["name", "type", "patch", "width", "blocks", "registers", "native px", "hub id"],
                       [[p["name"], p["type"], p["patch"], p["width"], p["blocks"], p["registers"], p["native_px"],
                         p["hf_id"]] for p in info["presets"]]))
    print(f"\nother encoder sources: hub ids, local directories (config.json + weights), {info['meta_checkpoints']}")
    print("\npackaged SAM2 models (build_sam2_vit(name) loads config + weights; --sam2-config name):")
    print(format_table(["name", "config", "what"], [[m["name"], m["config"], m["summary"]] for m in info["models"]]))
    for source, names in info["configs"].items():
        print(f"\nconfigs from {source} (pass to build_sam2 by name):")
        print("  " + "\n  ".join(names))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``info``."""
    info = subparsers.add_parser("info", help="installed commands, encoder types, presets, configs, versions and device")
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    info.set_defaults(func=cmd_info)
