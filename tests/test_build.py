"""Partial SAM2 checkpoint loading around a swapped trunk, and predictor helpers."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_overrides
from sam2.build_sam import build_sam2

from sam2_vitplug.build import (
    TRUNK_PREFIXES,
    backbone_feature_sizes,
    build_sam2_vit,
    build_sam2_vit_video_predictor,
    load_sam2_weights,
)


@pytest.fixture(scope="module")
def hiera_ckpt(tmp_path_factory):
    """A checkpoint in the official SAM 2.1 layout ({"model": state_dict}) from a random
    Hiera-S model; official weights cannot be downloaded here, the layout is what matters."""
    torch.manual_seed(1)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_s.yaml", ckpt_path=None, device="cpu")
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_small_random.pt"
    torch.save({"model": model.state_dict()}, path)
    return path, model.state_dict()


def test_partial_load_skips_trunk_and_neck_convs(tiny_models, hiera_ckpt):
    path, reference = hiera_ckpt
    torch.manual_seed(0)
    model = build_sam2_vit("sam2_vit_dino_s.yaml", path, device="cpu",
                           hydra_overrides_extra=tiny_overrides(tiny_models["dinov2"]))
    report = model.sam2_vitplug_load_report
    own = model.state_dict()
    skipped_expected = [k for k in reference if k.startswith(TRUNK_PREFIXES)]
    assert sorted(report.skipped) == sorted(skipped_expected) and report.skipped
    assert len(report.loaded) == len(reference) - len(skipped_expected)
    for name in report.loaded:  # everything else is the checkpoint's, bit for bit
        assert torch.equal(own[name], reference[name]), name
    assert any(k.startswith("sam_mask_decoder.") for k in report.loaded)
    assert any(k.startswith("memory_attention.") for k in report.loaded)
    assert any(k.startswith("memory_encoder.") for k in report.loaded)
    assert all(k.startswith(TRUNK_PREFIXES) for k in report.not_loaded)
    assert "loaded" in report.summary() and str(len(report.loaded)) in report.summary()


def test_partial_load_video_predictor(tiny_models, hiera_ckpt):
    path, reference = hiera_ckpt
    model = build_sam2_vit_video_predictor("sam2_vit_dinov3_s.yaml", path, device="cpu",
                                           hydra_overrides_extra=tiny_overrides(tiny_models["dinov3"]))
    assert torch.equal(model.state_dict()["maskmem_tpos_enc"], reference["maskmem_tpos_enc"])
    assert type(model).__name__ == "SAM2VideoPredictor"


def test_full_load_of_own_checkpoint_roundtrip(tiny_models, tmp_path):
    over = tiny_overrides(tiny_models["ijepa"])
    torch.manual_seed(3)
    trained = build_sam2("sam2_vit_ijepa_512.yaml", ckpt_path=None, device="cpu", hydra_overrides_extra=over)
    torch.save({"model": trained.state_dict()}, tmp_path / "own.pt")
    # upstream's strict loader takes a checkpoint of our own model as is
    torch.manual_seed(4)
    again = build_sam2("sam2_vit_ijepa_512.yaml", ckpt_path=str(tmp_path / "own.pt"), device="cpu",
                       hydra_overrides_extra=over)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), again.state_dict().values()))
    # and ours with exclude=() is strict over everything, safetensors too
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "own.safetensors"))
    report = load_sam2_weights(again, tmp_path / "own.safetensors", exclude=())
    assert not report.skipped and len(report.loaded) == len(trained.state_dict())


def test_checkpoint_errors(tiny_models, tmp_path, hiera_ckpt):
    model = build_sam2("sam2_vit_dino_s.yaml", ckpt_path=None, device="cpu",
                       hydra_overrides_extra=tiny_overrides(tiny_models["dinov2"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_sam2_weights(model, tmp_path / "nope.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_sam2_weights(model, bad)
    _, reference = hiera_ckpt
    broken = {k: v for k, v in reference.items() if not k.startswith("sam_mask_decoder.iou_prediction_head")}
    broken["extra.weight"] = torch.zeros(1)
    torch.save({"model": broken}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"missing sam_mask_decoder\.iou_prediction_head.*unexpected extra\.weight"):
        load_sam2_weights(model, tmp_path / "broken.pt")
    # nothing was loaded by the failed calls
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_backbone_feature_sizes():
    assert backbone_feature_sizes(1024) == [(256, 256), (128, 128), (64, 64)]
    assert backbone_feature_sizes(512) == [(128, 128), (64, 64), (32, 32)]
