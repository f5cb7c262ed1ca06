"""Named SAM2 models shipped with the package: a config plus weights, buildable by name.

Why: ``build_sam2_vit("sam2_vit_demo")`` should work on a machine with no downloads. A preset
pairs one of our model configs with a safetensors file inside the package (see
``sam2_vitplug/assets/``); the weights were trained with the same trunk, so they load fully
and strictly (nothing excluded).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO


@dataclass(frozen=True)
class SAM2Preset:
    """A buildable SAM2 model: ``config`` (found by our Hydra plugin) and packaged ``weights``."""

    name: str
    config: str
    weights: str  # relative to the sam2_vitplug package
    card: str  # relative to the sam2_vitplug package
    summary: str

    def weights_path(self) -> Path:
        from .encoders.loading import packaged_path

        return packaged_path(self.weights)


SAM2_PRESETS = {
    preset.name: preset
    for preset in (
        SAM2Preset(
            name="sam2_vit_demo",
            config="sam2_vit_demo.yaml",
            weights="assets/sam2_vit_demo/model.safetensors",
            card="assets/sam2_vit_demo/MODEL_CARD.md",
            summary="demo model trained here on synthetic shapes (256 px, DINOv2-arch ViT, 128 wide, 6 deep); "
                    "not for natural images",
        ),
    )
}


def find_sam2_preset(name: str) -> SAM2Preset | None:
    """The preset called ``name`` (with or without ``.yaml``), or None for any other config name."""
    return SAM2_PRESETS.get(str(name).removesuffix(".yaml"))


def resolve_sam2_config(name: str) -> str:
    """A config name as users type it -> the name ``build_sam2`` finds: upstream's configs live
    under ``configs/<version>/``, so ``sam2.1_hiera_l.yaml`` becomes
    ``configs/sam2.1/sam2.1_hiera_l.yaml``; ours and packaged models pass unchanged."""
    if name.startswith("sam2.1_hiera") or name.startswith("sam2_hiera"):
        folder = "sam2.1" if name.startswith("sam2.1") else "sam2"
        return f"configs/{folder}/{name}"
    return name


def build_named_sam2(config: str | None, ckpt: str | None, device: str, overrides: Sequence[str] = (),
                     log: TextIO | None = None):
    """The SAM2 model a task needs (few-shot proposals, box prompts, the app's clicks), built with
    :func:`~sam2_vitplug.build.build_sam2_vit`; one line on ``log`` (stderr) says which weights
    its masks come from, or warns that it has none."""
    from .build import build_sam2_vit

    log = sys.stderr if log is None else log
    if not config:
        raise ValueError("SAM2 is needed here; pass --sam2-config (e.g. sam2.1_hiera_l.yaml) and --sam2-ckpt")
    model = build_sam2_vit(resolve_sam2_config(config), ckpt, device=device, hydra_overrides_extra=list(overrides))
    report = model.sam2_vitplug_load_report
    if report is None:
        print(f"warning: SAM2 '{config}' has random weights: pass --sam2-ckpt", file=log)
    else:
        print(f"SAM2 weights: {report.summary()}", file=log)
    return model
