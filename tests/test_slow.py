"""Slow checks (make test-slow): full-size configs with random weights, inductor compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sam2.build_sam import build_sam2

CONFIGS = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "configs" / "sam2").glob("sam2_vit_*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_full_size_config_builds_and_runs(name):
    """Every shipped config at its real architecture (random weights): the encoder output has
    SAM2's geometry at 256 px and the channel list matches the neck."""
    model = build_sam2(name, ckpt_path=None, device="cpu",
                       hydra_overrides_extra=["++model.image_encoder.trunk.random_init=true", "++model.image_size=256"])
    with torch.inference_mode():
        out = model.forward_image(torch.randn(1, 3, 256, 256))
    assert [tuple(f.shape[-2:]) for f in out["backbone_fpn"]] == [(64, 64), (32, 32), (16, 16)]
    assert model.image_encoder.trunk.channel_list == model.image_encoder.neck.backbone_channel_list


@pytest.mark.slow
def test_inductor_compile_matches_eager(tiny_models):
    from sam2_vitplug.modeling import ViTTrunkMultiScale

    trunk = ViTTrunkMultiScale(str(tiny_models["dinov2"]), feature_layers=4).eval()
    x = torch.randn(1, 3, 128, 160)
    compiled = torch.compile(trunk)
    with torch.no_grad():
        ref, out = trunk(x), compiled(x)
    for r, o in zip(ref, out):
        # inductor fuses and reorders fp32 reductions: rounding-level differences only
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
