"""Meta checkpoint layouts at the real sizes (shapes only, meta-device tensors) and the errors of bad files.

The real-size state dicts below are written from Meta's constructors (dinov3/hub/backbones.py, ijepa
src/models/vision_transformer.py): key names and shapes only, no weights, so every released size
(including DINOv3 7B) is checked in milliseconds. The expected configs are the published hub config.json
values (transformers' convert_dinov3_vit_to_hf.py / convert_ijepa_to_hf.py), typed in here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam2_vitplug.encoders import load_encoder
from sam2_vitplug.encoders.meta_dinov3 import convert_meta_dinov3_state_dict, infer_dinov3_config
from sam2_vitplug.encoders.meta_ijepa import convert_meta_ijepa_state_dict, infer_ijepa_config

DATA = Path(__file__).parent / "data" / "meta_reference"
DINOV3_MLP = DATA / "dinov3" / "dinov3_mlp_vits16_recipe.pth"
DINOV3_SWIGLU = DATA / "dinov3" / "dinov3_swiglu_vith16plus_recipe.pth"
IJEPA = DATA / "ijepa" / "tiny-IN1K-vit.14-300e.pth.tar"


def _t(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def meta_dinov3_layout(dim: int, depth: int, heads: int, ffn_ratio: float, swiglu_align: int | None,
                       qkv_bias: bool = True, local_cls_norm: bool = False) -> dict[str, torch.Tensor]:
    """Key names and shapes of Meta's DinoVisionTransformer state dict (patch 16, 4 storage tokens)."""
    head_dim = dim // heads
    # Meta's RoPE: periods = base ** (2 * arange(head_dim // 4) / (head_dim // 2)), base 100; a real tensor
    periods = 100.0 ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))
    sd = {"cls_token": _t(1, 1, dim), "storage_tokens": _t(1, 4, dim), "mask_token": _t(1, dim),
          "patch_embed.proj.weight": _t(dim, 3, 16, 16), "patch_embed.proj.bias": _t(dim),
          "rope_embed.periods": periods, "norm.weight": _t(dim), "norm.bias": _t(dim)}
    if local_cls_norm:
        sd |= {"local_cls_norm.weight": _t(dim), "local_cls_norm.bias": _t(dim)}
    hidden = int(dim * ffn_ratio)
    for i in range(depth):
        b = f"blocks.{i}."
        sd |= {b + "norm1.weight": _t(dim), b + "norm1.bias": _t(dim), b + "attn.qkv.weight": _t(3 * dim, dim),
               b + "attn.proj.weight": _t(dim, dim), b + "attn.proj.bias": _t(dim), b + "ls1.gamma": _t(dim),
               b + "norm2.weight": _t(dim), b + "norm2.bias": _t(dim), b + "ls2.gamma": _t(dim)}
        if qkv_bias:
            mask = torch.ones(3 * dim)
            mask[dim:2 * dim] = 0
            sd |= {b + "attn.qkv.bias": _t(3 * dim), b + "attn.qkv.bias_mask": mask}
        if swiglu_align is None:
            sd |= {b + "mlp.fc1.weight": _t(hidden, dim), b + "mlp.fc1.bias": _t(hidden),
                   b + "mlp.fc2.weight": _t(dim, hidden), b + "mlp.fc2.bias": _t(dim)}
        else:  # Meta's SwiGLUFFN: int(2/3 * hidden) rounded up to a multiple of align_to
            h = (int(hidden * 2 / 3) + swiglu_align - 1) // swiglu_align * swiglu_align
            sd |= {b + "mlp.w1.weight": _t(h, dim), b + "mlp.w1.bias": _t(h), b + "mlp.w2.weight": _t(h, dim),
                   b + "mlp.w2.bias": _t(h), b + "mlp.w3.weight": _t(dim, h), b + "mlp.w3.bias": _t(dim)}
    return sd


# released DINOv3 ViTs: Meta constructor args -> published config (hidden, layers, heads, intermediate, gated)
DINOV3_RELEASED = {
    "vits16": ((384, 12, 6, 4, None), (384, 12, 6, 1536, False)),
    "vits16plus": ((384, 12, 6, 6, 8), (384, 12, 6, 1536, True)),
    "vitb16": ((768, 12, 12, 4, None), (768, 12, 12, 3072, False)),
    "vitl16": ((1024, 24, 16, 4, None), (1024, 24, 16, 4096, False)),
    "vitl16_sat493m": ((1024, 24, 16, 4, None), (1024, 24, 16, 4096, False)),
    "vitl16plus": ((1024, 24, 16, 6, 8), (1024, 24, 16, 4096, True)),
    "vith16plus": ((1280, 32, 20, 6, 8), (1280, 32, 20, 5120, True)),
    "vit7b16": ((4096, 40, 32, 3, 64), (4096, 40, 32, 8192, True)),
}


@pytest.mark.parametrize("name", sorted(DINOV3_RELEASED))
def test_every_released_dinov3_size_converts(name):
    from transformers import DINOv3ViTModel

    (dim, depth, heads, ratio, align), want = DINOV3_RELEASED[name]
    big = name.startswith("vit7b") or name.endswith("sat493m")  # untie_global_and_local_cls_norm=True
    sd = meta_dinov3_layout(dim, depth, heads, ratio, align, qkv_bias=not name.startswith("vit7b"),
                            local_cls_norm=big)
    cfg = infer_dinov3_config(sd)
    gated = want[4]
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.use_gated_mlp) == want
    assert cfg.hidden_act == ("silu" if gated else "gelu")
    assert (cfg.rope_theta, cfg.layer_norm_eps, cfg.num_register_tokens, cfg.patch_size) == (100.0, 1e-5, 4, 16)
    assert (cfg.query_bias, cfg.value_bias, cfg.key_bias) == ((False, False, False) if name.startswith("vit7b")
                                                              else (True, True, False))
    converted = convert_meta_dinov3_state_dict(sd, cfg)
    with torch.device("meta"):
        own = DINOv3ViTModel(cfg).state_dict()
    assert converted.keys() == own.keys()
    assert all(converted[k].shape == own[k].shape for k in own)


@pytest.mark.parametrize("dim,depth,patch,grid,want_heads,want_inter", [
    (1280, 32, 14, 16, 16, 5120),  # IN1K / IN22K-vit.h.14 (224 px)
    (1280, 32, 16, 28, 16, 5120),  # IN1K-vit.h.16-448px
    (1408, 40, 16, 14, 16, 6144),  # IN22K-vit.g.16 (mlp_ratio 48/11)
])
def test_released_ijepa_sizes_convert(dim, depth, patch, grid, want_heads, want_inter):
    from transformers import IJepaModel

    sd = {"pos_embed": _t(1, grid * grid, dim), "patch_embed.proj.weight": _t(dim, 3, patch, patch),
          "patch_embed.proj.bias": _t(dim), "norm.weight": _t(dim), "norm.bias": _t(dim)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd |= {b + "norm1.weight": _t(dim), b + "norm1.bias": _t(dim), b + "attn.qkv.weight": _t(3 * dim, dim),
               b + "attn.qkv.bias": _t(3 * dim), b + "attn.proj.weight": _t(dim, dim), b + "attn.proj.bias": _t(dim),
               b + "norm2.weight": _t(dim), b + "norm2.bias": _t(dim), b + "mlp.fc1.weight": _t(want_inter, dim),
               b + "mlp.fc1.bias": _t(want_inter), b + "mlp.fc2.weight": _t(dim, want_inter),
               b + "mlp.fc2.bias": _t(dim)}
    cfg = infer_ijepa_config(sd)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (
        dim, depth, want_heads, want_inter)
    assert (cfg.patch_size, cfg.image_size, cfg.layer_norm_eps) == (patch, grid * patch, 1e-6)
    converted = convert_meta_ijepa_state_dict(sd, cfg)
    with torch.device("meta"):
        own = IJepaModel(cfg).state_dict()
    assert converted.keys() == own.keys() and all(converted[k].shape == own[k].shape for k in own)


# ----------------------------------------------------------------------------- what is refused, and how


def _tiny_dinov3() -> dict[str, torch.Tensor]:
    return dict(torch.load(DINOV3_MLP, weights_only=True))


def _save(tmp_path: Path, name: str, obj) -> str:
    torch.save(obj, tmp_path / name)
    return str(tmp_path / name)


def test_untied_cls_norm_is_refused(tmp_path):
    sd = _tiny_dinov3() | {"cls_norm.weight": torch.ones(128), "cls_norm.bias": torch.zeros(128)}
    with pytest.raises(ValueError, match="untied.pth.*untie_cls_and_patch_norms.*cannot be converted"):
        load_encoder(_save(tmp_path, "untied.pth", sd))


def test_local_cls_norm_is_dropped_and_changes_nothing(tmp_path):
    sd = _tiny_dinov3()
    plain = load_encoder(str(DINOV3_MLP)).model
    with_local = load_encoder(_save(tmp_path, "local.pth", sd | {"local_cls_norm.weight": torch.full((128,), 3.0),
                                                                  "local_cls_norm.bias": torch.ones(128)})).model
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain(pixel_values=x).last_hidden_state, with_local(pixel_values=x).last_hidden_state)


def test_bias_mask_is_checked(tmp_path):
    sd = _tiny_dinov3()
    sd["blocks.1.attn.qkv.bias_mask"] = torch.ones(384)  # k bias used in block 1 only
    with pytest.raises(ValueError, match="masks the key bias in some blocks only"):
        load_encoder(_save(tmp_path, "kmask.pth", sd))
    sd["blocks.1.attn.qkv.bias_mask"] = torch.cat([torch.zeros(128), torch.ones(256)])  # q bias masked
    with pytest.raises(ValueError, match=r"bias_mask is not 1/0/1 \(or 1/1/1\)"):
        load_encoder(_save(tmp_path, "qmask.pth", sd))


def test_min_max_period_rope_is_refused(tmp_path):
    sd = _tiny_dinov3()
    sd["rope_embed.periods"] = torch.linspace(0.5, 50.0, 16)
    with pytest.raises(ValueError, match="min/max-period RoPE"):
        load_encoder(_save(tmp_path, "rope.pth", sd))


def test_no_family_lists_each_family_and_its_missing_keys(tmp_path):
    path = _save(tmp_path, "resnet.pth", {"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(4)})
    with pytest.raises(ValueError) as info:
        load_encoder(path)
    msg = str(info.value)
    assert "resnet.pth" in msg and "'conv1.weight'" in msg
    assert "DINOv2 needs" in msg and "DINOv3 needs" in msg and "I-JEPA needs" in msg
    assert "(missing cls_token, rope_embed.periods, patch_embed.proj.weight, blocks.<i>.*)" in msg  # DINOv3's


def test_training_dict_is_recognised(tmp_path):
    obj = {"model": {"head.weight": torch.zeros(2, 2)}, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}
    with pytest.raises(ValueError, match="train.pth is a training checkpoint \\(it has 'optimizer', 'epoch'\\)"):
        load_encoder(_save(tmp_path, "train.pth", obj))


def test_ijepa_dict_without_the_asked_encoder(tmp_path):
    obj = torch.load(IJEPA, weights_only=True)
    del obj["target_encoder"]
    path = _save(tmp_path, "ctx_only.pth.tar", obj)
    with pytest.raises(ValueError, match="no 'target_encoder' weights \\(it holds encoder\\).*#encoder"):
        load_encoder(path)
    assert load_encoder(path + "#encoder").location.endswith("ctx_only.pth.tar#encoder")


def test_selector_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown weights selector '#teacher'"):
        load_encoder(f"{IJEPA}#teacher")
    with pytest.raises(ValueError, match="is a DINOv3 state dict, not I-JEPA|has no 'encoder'/'target_encoder'"):
        load_encoder(f"{DINOV3_MLP}#encoder")
    with pytest.raises(ValueError, match="applies only to an I-JEPA .pth.tar"):
        load_encoder("dinov3_small", ijepa_weights="encoder")


def test_encoder_type_must_match_the_file():
    with pytest.raises(ValueError, match="'dinov3_vit' model but encoder_type='dino'"):
        load_encoder(str(DINOV3_MLP), encoder_type="dino")
    assert load_encoder(str(IJEPA), encoder_type="ijepa").family.name == "ijepa"


def test_bf16_file_keeps_the_rope_base(tmp_path):
    """A file saved in bf16 holds the periods to ~3 digits; the base is still Meta's 100."""
    sd = {k: v.to(torch.bfloat16) for k, v in _tiny_dinov3().items()}
    enc = load_encoder(_save(tmp_path, "bf16.pth", sd))
    assert enc.config.rope_theta == 100.0 and enc.model.embeddings.cls_token.dtype == torch.bfloat16


def test_convnext_is_named(tmp_path):
    path = _save(tmp_path, "dinov3_convnext_tiny.pth", {"downsample_layers.0.0.weight": torch.zeros(2, 3, 4, 4),
                                                        "stages.0.0.dwconv.weight": torch.zeros(2, 1, 7, 7)})
    with pytest.raises(ValueError, match="looks like a DINOv3 ConvNeXt backbone.*ViTs only"):
        load_encoder(path)


def _tokens(source: str, px: int = 64) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(1, 3, px, px)
    with torch.no_grad():
        return load_encoder(source).model(pixel_values=x).last_hidden_state


def test_key_bias_without_a_mask_is_kept(tmp_path):
    """mask_k_bias=False files (no bias_mask): Meta adds the k bias, and with RoPE it is not a softmax-row
    constant (it is rotated per position), so it must be kept: key_bias=True with the file's k third."""
    sd = {k: v for k, v in _tiny_dinov3().items() if not k.endswith("bias_mask")}
    enc = load_encoder(_save(tmp_path, "nomask.pth", sd))
    assert enc.config.key_bias
    for i in range(enc.config.num_hidden_layers):
        got = enc.model.state_dict()[f"model.layer.{i}.attention.k_proj.bias"]
        assert torch.equal(got, sd[f"blocks.{i}.attn.qkv.bias"][128:256]) and got.abs().max() > 0.05
    # the k bias changes the tokens far beyond any rounding (measured 0.14), so dropping it would be wrong
    assert (_tokens(str(tmp_path / "nomask.pth")) - _tokens(str(DINOV3_MLP))).abs().max().item() > 0.01


def test_missing_layerscale_is_the_identity(tmp_path):
    sd = _tiny_dinov3()
    ones = {k: torch.ones_like(v) if k.endswith(("ls1.gamma", "ls2.gamma")) else v for k, v in sd.items()}
    without = {k: v for k, v in sd.items() if not k.endswith(("ls1.gamma", "ls2.gamma"))}
    assert torch.equal(_tokens(_save(tmp_path, "no_ls.pth", without)), _tokens(_save(tmp_path, "ones.pth", ones)))


def test_no_storage_tokens(tmp_path):
    sd = {k: v for k, v in _tiny_dinov3().items() if k != "storage_tokens"}
    enc = load_encoder(_save(tmp_path, "no_storage.pth", sd))
    assert enc.config.num_register_tokens == 0
    assert _tokens(str(tmp_path / "no_storage.pth")).shape == (1, 1 + 16, 128)


def test_default_ijepa_choice_is_announced(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="sam2_vitplug.encoders.loading"):
        load_encoder(str(IJEPA))
    assert "using its 'target_encoder' weights (the default" in caplog.text and "'#encoder'" in caplog.text


def test_ijepa_entry_holding_another_family(tmp_path):
    path = _save(tmp_path, "odd.pth.tar", {"encoder": _tiny_dinov3(), "epoch": 1})
    with pytest.raises(ValueError, match="the 'encoder' entry is a DINOv3 state dict, not I-JEPA"):
        load_encoder(path + "#encoder")


def test_legacy_torch_save_format_loads(tmp_path):
    """Files written before the zip format cannot be memory-mapped; they are read the old way."""
    path = tmp_path / "legacy.pth"
    torch.save(_tiny_dinov3(), path, _use_new_zipfile_serialization=False)
    assert torch.equal(_tokens(str(path)), _tokens(str(DINOV3_MLP)))


def test_random_init_keeps_the_file_architecture_not_its_weights():
    file_model = load_encoder(str(DINOV3_SWIGLU)).model
    enc = load_encoder(str(DINOV3_SWIGLU), random_init=True)
    assert enc.source == "random" and enc.config.to_dict() == file_model.config.to_dict()
    got, want = enc.model.state_dict(), file_model.state_dict()
    assert got.keys() == want.keys()
    assert not torch.equal(got["model.layer.0.mlp.gate_proj.weight"], want["model.layer.0.mlp.gate_proj.weight"])
