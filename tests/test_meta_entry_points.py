"""Every Meta reference file through every public entry point that takes an encoder: the trunk in a SAM2
config (Hydra ``++model.image_encoder.trunk.pretrained=<file>``), the few-shot matcher, ``sam2-vitplug
features`` and ``sam2-vitplug seg train --encoder``. Each test compares the tokens the entry point's own
ViT produces with Meta's stored outputs (tests/data/meta_reference/), so a skipped or mis-mapped load fails.

Tolerance ATOL = 1e-4 max abs (see tests/test_meta_reference.py for why). Measured max abs patch-token
difference, identical for the matcher and ``features`` (K=1 = the identity transform, output at the token
grid) and for the trunk and ``seg train`` (the same model on the same input as ``load_encoder``):
DINOv3 MLP 224 1.9e-6, DINOv3 SwiGLU 512 2.9e-6, DINOv2 reg4 896x672 1.2e-6, chunked 518 1.5e-6,
I-JEPA target_encoder 2.6e-6, encoder 1.9e-6. One image and one forward per file; ``seg train`` runs a
single step. Hydra needs a value holding '#' (``file.pth.tar#encoder``) quoted: ``pretrained='...#encoder'``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from test_meta_reference import (  # noqa: I001  (shared fixture helpers)
    ATOL, DATA, DINOV2_CHUNKED, DINOV2_REG, DINOV3_MLP, DINOV3_SWIGLU, IJEPA, expected_tokens, grid_rows, pixels,
    reference,
)

# (source string, image folder, size kept in tests/data, prefix tokens, patch, SAM2 config overlay)
SOURCES = {
    "dinov3_mlp": (str(DINOV3_MLP), "dinov3", "224x224", 5, 16, "sam2_vit_dinov3_s.yaml"),
    "dinov3_swiglu": (str(DINOV3_SWIGLU), "dinov3", "512x512", 5, 16, "sam2_vit_dinov3_s.yaml"),
    "dinov2_reg4": (str(DINOV2_REG), "dinov2_reg4", "896x672", 5, 14, "sam2_vit_dino_s.yaml"),
    "dinov2_reg4_chunked": (str(DINOV2_CHUNKED), "dinov2_reg4", "518x518", 5, 14, "sam2_vit_dino_s.yaml"),
    "ijepa_target": (str(IJEPA), "ijepa", "224x224", 0, 14, "sam2_vit_ijepa_512.yaml"),
    "ijepa_context": (f"{IJEPA}#encoder", "ijepa", "224x224", 0, 14, "sam2_vit_ijepa_512.yaml"),
}


def meta_patch(name: str) -> tuple[torch.Tensor, int]:
    """Meta's patch tokens of source ``name`` at its size, and the row step they were kept with."""
    source, folder, size, _, patch, _ = SOURCES[name]
    if name.startswith("ijepa"):
        which = "encoder" if source.endswith("#encoder") else "target_encoder"
        return reference(IJEPA)[f"{size}.{which}.patch"], 1
    _, want, step = expected_tokens(reference(DATA / folder / source.rsplit("/", 1)[1]), size, patch)
    return want, step


def assert_grid_matches(name: str, grid: torch.Tensor) -> None:
    """``grid`` (1, C, h, w) against Meta's patch tokens of ``name``."""
    _, _, size, _, patch, _ = SOURCES[name]
    want, step = meta_patch(name)
    tokens = grid.flatten(2).transpose(1, 2)
    got = grid_rows(tokens, size, patch, step)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < ATOL


def rgb01(name: str) -> torch.Tensor:
    _, folder, size, *_ = SOURCES[name]
    rgb = np.array(Image.open(DATA / folder / f"image_{size}.png").convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_trunk_in_a_sam2_config(name):
    from sam2_vitplug import build_sam2_vit

    source, folder, size, prefix, patch, config = SOURCES[name]
    model = build_sam2_vit(config, device="cpu", hydra_overrides_extra=[
        # Hydra's grammar takes '#' only inside a quoted value
        f"++model.image_encoder.trunk.pretrained='{source}'",
        "++model.image_encoder.trunk.out_dims=[32,32,16,8]", "++model.image_size=224"])
    trunk = model.image_encoder.trunk
    x = pixels(folder, size)
    if patch == 16:  # the trunk's own forward: no resize for patch 16, the stride-16 map is the token grid
        with torch.no_grad():
            maps = trunk.forward_vit_maps(x)
        assert_grid_matches(name, maps[trunk.feature_layers.index(trunk.num_layers - 1)])
    else:  # patch 14 inputs are resized by the trunk (H/16*14), so its ViT is run on Meta's image directly
        with torch.no_grad():
            out = trunk.vit(pixel_values=x, **dict(trunk.family.forward_kwargs)).last_hidden_state
        h, w = (int(s) // patch for s in size.split("x"))
        assert out.shape[1] == prefix + h * w
        assert_grid_matches(name, out[:, prefix:].transpose(1, 2).reshape(1, -1, h, w))


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_fewshot_matcher(name):
    from sam2_vitplug.matching.encoder import load_matcher

    source, _, size, *_ = SOURCES[name]
    matcher = load_matcher(source, input_size=int(size.split("x")[0]))
    assert_grid_matches(name, matcher.encode(rgb01(name)))


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_features_cli(name, tmp_path):
    from sam2_vitplug.cli import main

    source, folder, size, _, patch, _ = SOURCES[name]
    out = tmp_path / "f.safetensors"
    assert main(["features", str(DATA / folder / f"image_{size}.png"), "--encoder", source, "--transforms", "1",
                 "--input-size", str(max(int(s) for s in size.split("x"))), "--out-stride", str(patch),
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    assert_grid_matches(name, load_file(out)["features"][None])


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    """Two 64x64 images with class masks (paired by file name)."""
    root = tmp_path_factory.mktemp("meta_seg")
    rng = np.random.default_rng(0)
    for split in ("images", "masks"):
        (root / split).mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 3, (64, 64), dtype=np.uint8)).save(root / "masks" / f"{i}.png")
    return root


@pytest.mark.parametrize("name", ["dinov3_swiglu", "dinov2_reg4", "ijepa_context"])
def test_seg_train_encoder(name, seg_data, tmp_path):
    """One training step with ``--encoder <Meta file>``; the saved model's frozen ViT is Meta's."""
    from sam2_vitplug.cli import main
    from sam2_vitplug.heads.model import load_seg_model

    source, folder, size, prefix, patch, _ = SOURCES[name]
    ck = tmp_path / "ck"
    assert main(["seg", "train", "--head", "linear", "--encoder", source, "--num-classes", "3",
                 "--image-paths", str(seg_data / "images"), "--mask-paths", str(seg_data / "masks"),
                 "--image-size", "64", "--batch-size", "2", "--epochs", "1", "--warmup-epochs", "0",
                 "--head-opt", "backbone.feature_layers=1",  # the fixtures have 2 blocks
                 "--max-steps-per-epoch", "1", "--num-workers", "0", "--checkpoint-dir", str(ck), "--no-progress",
                 "--device", "cpu"]) == 0
    vit = load_seg_model(ck / "last.pt").trunk.vit
    with torch.no_grad():
        out = vit(pixel_values=pixels(folder, size), **({"interpolate_pos_encoding": True} if prefix == 0 else {}))
    h, w = (int(s) // patch for s in size.split("x"))
    assert_grid_matches(name, out.last_hidden_state[:, prefix:].transpose(1, 2).reshape(1, -1, h, w))
