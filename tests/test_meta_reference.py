"""Meta release-layout checkpoints (DINOv3 .pth, DINOv2 _reg4 .pth, I-JEPA .pth.tar) through ``load_encoder``,
checked against the outputs Meta's own code computed from the same files (tests/data/meta_reference/).

Tolerance: ATOL = 1e-4 max abs, the golden set's own tolerance. Both sides are float32 on the same weights;
the remaining differences are the order of floating-point operations (fused qkv vs three projections,
Meta's attention vs SDPA). Measured here (CPU, torch 2.14.1, transformers 5.24) on tokens of magnitude ~1-5,
on the stored tokens (full grid in brackets, measured against ../shared's complete outputs):

    DINOv3 MLP     224: patch 1.9e-6 cls 1.3e-6 storage 1.4e-6 | 1024x768: patch 3.1e-6 [3.3e-6] cls 1.7e-6
                   storage 1.3e-6 | [512: patch 2.6e-6 cls 1.4e-6 storage 1.9e-6]
    DINOv3 SwiGLU  224: patch 2.4e-6 cls 2.4e-6 storage 3.1e-6 | 512: patch 2.9e-6 cls 1.1e-6 storage 1.7e-6
                   | [1024x768: patch 3.3e-6 cls 1.1e-6 storage 1.8e-6]
    DINOv2 reg4    896x672: patch 1.2e-6 [1.4e-6] cls 7.8e-7 reg 1.1e-6 | [518: patch 1.3e-6, 896: 1.6e-6]
                   | chunked 518: patch 1.5e-6 cls 8.3e-7 reg 1.2e-6
    I-JEPA         224: target_encoder 2.6e-6, encoder 1.9e-6 (patch; I-JEPA has no CLS)

so ATOL is ~30x the worst case, while the mapping mistakes tried are far above it: gelu instead of SwiGLU's
silu (> 100 ATOL, test_swiglu_needs_silu), the other I-JEPA encoder (0.68), a dropped unmasked key bias
(0.14, tests/test_meta_layouts.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sam2_vitplug.encoders import load_encoder

DATA = Path(__file__).parent / "data" / "meta_reference"
ATOL = 1e-4
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

DINOV3_MLP = DATA / "dinov3" / "dinov3_mlp_vits16_recipe.pth"
DINOV3_SWIGLU = DATA / "dinov3" / "dinov3_swiglu_vith16plus_recipe.pth"
DINOV2_REG = DATA / "dinov2_reg4" / "dinov2_reg4_mlp.pth"
DINOV2_CHUNKED = DATA / "dinov2_reg4" / "dinov2_reg4_mlp_chunked.pth"
IJEPA = DATA / "ijepa" / "tiny-IN1K-vit.14-300e.pth.tar"


def pixels(folder: str, size: str) -> torch.Tensor:
    """The fixture image, preprocessed as Meta's outputs were (x/255, ImageNet mean/std)."""
    rgb = np.array(Image.open(DATA / folder / f"image_{size}.png").convert("RGB"))
    return (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - MEAN) / STD


def reference(ckpt: Path) -> dict[str, torch.Tensor]:
    name = ckpt.name.replace(".pth.tar", "").replace(".pth", "")
    if ckpt == IJEPA:
        name = "ijepa_tiny"
    return load_file(DATA / ckpt.parent.name / f"{name}.outputs.safetensors")


def meta_kwargs(ckpt: Path) -> dict:
    models = json.loads((ckpt.parent / "meta_constructor_kwargs.json").read_text())
    if ckpt == IJEPA:
        return models["encoder"]["kwargs"]
    return models["models"][ckpt.name.replace(".pth", "")]["kwargs"]


def expected_tokens(ref: dict[str, torch.Tensor], size: str, patch: int) -> tuple[str, torch.Tensor, int]:
    """Meta's patch tokens at ``size`` and the row step they were subsampled with (1 = all)."""
    for key, value in ref.items():
        if key.startswith(f"{size}.") and ".patch" in key and "encoder" not in key:
            step = int(key.rsplit("patch_rows", 1)[1]) if "patch_rows" in key else 1
            return key, value, step
    raise KeyError(size)


def grid_rows(patch_tokens: torch.Tensor, size: str, patch: int, step: int) -> torch.Tensor:
    h, w = (int(s) // patch for s in size.split("x"))
    return patch_tokens.reshape(1, h, w, -1)[:, ::step].reshape(1, -1, patch_tokens.shape[-1])


def forward(loaded, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(pixel_values=x, **dict(loaded.family.forward_kwargs)).last_hidden_state


# (checkpoint, image folder, size, prefix name in Meta's outputs, patch size)
CASES = [
    (DINOV3_MLP, "dinov3", "224x224", "storage", 16),
    (DINOV3_MLP, "dinov3", "1024x768", "storage", 16),
    (DINOV3_SWIGLU, "dinov3", "224x224", "storage", 16),
    (DINOV3_SWIGLU, "dinov3", "512x512", "storage", 16),
    (DINOV2_REG, "dinov2_reg4", "896x672", "reg", 14),
    (DINOV2_CHUNKED, "dinov2_reg4", "518x518", "reg", 14),
]


@pytest.fixture(scope="module")
def loaded():
    cache: dict[str, object] = {}

    def get(source: str):
        if source not in cache:
            cache[source] = load_encoder(source)
        return cache[source]

    return get


@pytest.mark.parametrize("ckpt,folder,size,reg_key,patch", CASES, ids=[f"{c[0].stem}-{c[2]}" for c in CASES])
def test_patch_cls_register_tokens_match_meta(loaded, ckpt, folder, size, reg_key, patch):
    enc = loaded(str(ckpt))
    ref = reference(ckpt)
    regs = int(meta_kwargs(ckpt).get("n_storage_tokens", meta_kwargs(ckpt).get("num_register_tokens", 0)))
    assert regs == 4
    out = forward(enc, pixels(folder, size))
    _, want, step = expected_tokens(ref, size, patch)
    got = grid_rows(out[:, 1 + regs:], size, patch, step)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < ATOL
    assert (out[:, 0] - ref[f"{size}.cls"]).abs().max().item() < ATOL
    assert (out[:, 1:1 + regs] - ref[f"{size}.{reg_key}"]).abs().max().item() < ATOL


@pytest.mark.parametrize("source,which", [(str(IJEPA), "target_encoder"), (f"{IJEPA}#target_encoder", "target_encoder"),
                                          (f"{IJEPA}#encoder", "encoder")])
def test_ijepa_encoders_match_meta(loaded, source, which):
    enc = loaded(source)
    assert enc.family.name == "ijepa" and enc.location.endswith(f"#{which}")
    out = forward(enc, pixels("ijepa", "224x224"))
    want = reference(IJEPA)[f"224x224.{which}.patch"]
    assert out.shape == want.shape == (1, 256, 64)  # no CLS token: every token is a patch
    assert (out - want).abs().max().item() < ATOL


def test_ijepa_keyword_selects_like_the_suffix_and_says_which(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="sam2_vitplug.encoders.loading"):
        by_kw = load_encoder(str(IJEPA), ijepa_weights="encoder")
    assert by_kw.location.endswith("#encoder") and "'encoder' weights" in caplog.text
    want = reference(IJEPA)["224x224.encoder.patch"]
    assert (forward(by_kw, pixels("ijepa", "224x224")) - want).abs().max().item() < ATOL
    other = reference(IJEPA)["224x224.target_encoder.patch"]
    assert (want - other).abs().max().item() > 0.1  # the two encoders are told apart at ATOL
    with pytest.raises(ValueError, match="selects 'encoder' but ijepa_weights='target_encoder'"):
        load_encoder(f"{IJEPA}#encoder", ijepa_weights="target_encoder")


def test_architecture_read_from_the_tensors(loaded):
    """Config fields against Meta's constructor kwargs (and Meta's layer rules), not against our code."""
    for ckpt in (DINOV3_MLP, DINOV3_SWIGLU):
        kw, cfg = meta_kwargs(ckpt), loaded(str(ckpt)).config
        gated = kw["ffn_layer"] == "swiglu"
        hidden = kw["embed_dim"] * kw["ffn_ratio"]
        # Meta's SwiGLUFFN: int(2/3 * hidden) rounded up to a multiple of 8
        want_inter = (int(hidden * 2 / 3) + 7) // 8 * 8 if gated else int(hidden)
        assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size) == (
            kw["embed_dim"], kw["depth"], kw["num_heads"], kw["patch_size"])
        assert (cfg.use_gated_mlp, cfg.hidden_act, cfg.intermediate_size) == (gated, "silu" if gated else "gelu",
                                                                              want_inter)
        assert cfg.num_register_tokens == kw["n_storage_tokens"] and cfg.rope_theta == kw["pos_embed_rope_base"]
        assert cfg.layer_norm_eps == 1e-5  # norm_layer="layernormbf16" is nn.LayerNorm(eps=1e-5)
        assert (cfg.query_bias, cfg.key_bias, cfg.value_bias) == (True, False, True)
    kw, cfg = meta_kwargs(IJEPA), loaded(str(IJEPA)).config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size) == (
        kw["embed_dim"], kw["depth"], kw["num_heads"], kw["patch_size"])
    assert cfg.layer_norm_eps == 1e-6 and cfg.image_size == kw["img_size"][0]
    assert cfg.intermediate_size == kw["embed_dim"] * kw["mlp_ratio"]


def test_swiglu_needs_silu(loaded):
    """With transformers' default gelu in the gated MLP the tokens are far off: the silu test means something."""
    from transformers.activations import ACT2FN

    enc = load_encoder(str(DINOV3_SWIGLU))
    for layer in enc.model.model.layer:
        layer.mlp.act_fn = ACT2FN["gelu"]
    want = reference(DINOV3_SWIGLU)["224x224.patch"]
    diff = (forward(enc, pixels("dinov3", "224x224"))[:, 5:] - want).abs().max().item()
    assert diff > 100 * ATOL
