"""Meta-format DINOv2 checkpoints -> transformers, checked against Meta's own reference code.

Offline and CPU-only: the reference is Meta's ``dinov2`` package (installed with --no-deps, no
xFormers) with small random models, so no weights are downloaded.

Tolerance: both sides run in float32 on the same weights; the only differences are the order of
floating-point operations (fused qkv vs three projections, explicit softmax(QK^T)V vs SDPA).
Measured max abs difference of the final normed patch tokens is 0.95e-6..1.5e-6 at every size
(224/448/518/602/896 px, MLP and SwiGLU) for tokens of magnitude ~6, i.e. ~2.5e-7 relative.
ATOL = 1e-5 is ~7x that. transformers' default interpolation (``size=``) misses the reference by
0.14..0.54 at the non-native sizes with these weights (0.23 at 448 px), far above ATOL, so the
comparison does detect the fix.
"""

from __future__ import annotations

import logging
import os
from functools import partial

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

logging.getLogger("dinov2").setLevel(logging.ERROR)  # "xFormers not available" noise
vits = pytest.importorskip("dinov2.models.vision_transformer")
from dinov2.layers import MemEffAttention, NestedTensorBlock  # noqa: E402
from transformers import Dinov2Model, Dinov2WithRegistersModel  # noqa: E402
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings  # noqa: E402

from sam2_vitplug.encoders.meta_dinov2 import (  # noqa: E402
    convert_meta_dinov2_state_dict,
    infer_dinov2_config,
    load_meta_dinov2,
)
from sam2_vitplug.encoders.pos_embed import meta_interpolate_pos_embed, use_meta_pos_interpolation  # noqa: E402

ATOL = 1e-5
EMBED_DIM, HEADS, PATCH, IMG = 384, 6, 14, 518


def _reference(depth: int = 2, ffn_layer: str = "mlp", block_chunks: int = 0, seed: int = 0) -> torch.nn.Module:
    """Meta's DinoVisionTransformer (ViT-S/14 widths, fewer blocks) with every parameter randomised.

    LayerScale gammas, norms, biases, CLS/mask tokens and the position table are all perturbed away
    from their init values, so a mis-mapped key cannot hide behind an identity/zero init. The
    position table is a smooth field plus noise, roughly like a trained one.
    """
    torch.manual_seed(seed)
    model = vits.DinoVisionTransformer(
        img_size=IMG,
        patch_size=PATCH,
        embed_dim=EMBED_DIM,
        depth=depth,
        num_heads=HEADS,
        mlp_ratio=4,
        block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
        init_values=1.0,
        block_chunks=block_chunks,
        ffn_layer=ffn_layer,
    )
    side = IMG // PATCH
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand_like(p) * 1.5 + 0.25)
            elif name == "pos_embed":
                smooth = torch.nn.functional.interpolate(
                    torch.randn(1, EMBED_DIM, 8, 8), size=(side, side), mode="bicubic"
                )
                p[:, 1:] = smooth.flatten(2).transpose(1, 2) + 0.1 * torch.randn(1, side * side, EMBED_DIM)
                p[:, 0] = torch.randn(EMBED_DIM)
            elif name in ("cls_token", "mask_token"):
                p.normal_()
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    ref = _reference()
    path = tmp_path_factory.mktemp("ckpt") / "dinov2_small_test.pth"
    torch.save(ref.state_dict(), path)
    return ref, load_meta_dinov2(path)


def _tokens(ref, hf, px_h: int, px_w: int | None = None, seed: int = 1):
    torch.manual_seed(seed)
    x = torch.randn(1, 3, px_h, px_w or px_h)
    with torch.no_grad():
        want = ref.forward_features(x)["x_norm_patchtokens"]
        got = hf(pixel_values=x).last_hidden_state[:, 1:]
    return want, got


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("px", [518, 224, 448, 896])
def test_patch_tokens_match_reference(plain, px):
    ref, hf = plain
    assert isinstance(hf, Dinov2Model)
    assert hf.embeddings._sam2_vitplug_pos_interp == "meta"
    want, got = _tokens(ref, hf, px)
    assert got.shape == want.shape == (1, (px // PATCH) ** 2, EMBED_DIM)
    diff = (want - got).abs().max().item()
    assert diff < ATOL, f"{px}px: max abs diff {diff:.3g} >= {ATOL}"


def test_non_square_input_matches_reference(plain):
    ref, hf = plain
    want, got = _tokens(ref, hf, 448, 224)
    assert got.shape == want.shape == (1, 32 * 16, EMBED_DIM)
    assert (want - got).abs().max().item() < ATOL


def test_hf_default_interpolation_is_detectably_different(plain):
    """Without our patch the 448 px tokens miss the reference by far more than ATOL."""
    ref, hf = plain
    del hf.embeddings.interpolate_pos_encoding  # back to the class method (transformers' rule)
    try:
        want, got = _tokens(ref, hf, 448)
    finally:
        use_meta_pos_interpolation(hf.embeddings)
    diff = (want - got).abs().max().item()
    assert diff > 100 * ATOL, f"HF default only differs by {diff:.3g}; the numeric tests would prove nothing"


def test_patch_is_per_instance(plain):
    _, hf = plain
    assert "interpolate_pos_encoding" in vars(hf.embeddings)
    assert Dinov2Embeddings.interpolate_pos_encoding.__qualname__.startswith("Dinov2Embeddings.")
    other = Dinov2Model(infer_dinov2_config(_reference(depth=1).state_dict()))
    assert "interpolate_pos_encoding" not in vars(other.embeddings)
    assert not hasattr(other.embeddings, "_sam2_vitplug_pos_interp")


def test_patched_embeddings_compile(plain):
    """The bound method traces with fullgraph (no graph breaks) and follows parameter updates.

    aot_eager decomposes bicubic upsampling into elementwise ops, which moves the result by
    ~3e-6 (fp32 rounding) against the native kernel, hence ATOL rather than exact equality; the
    transformers rule is ~0.1 away, so the compiled graph demonstrably uses Meta's rule.
    """
    _, hf = plain
    emb = hf.embeddings
    compiled = torch.compile(emb, backend="aot_eager", fullgraph=True)
    hf_rule = Dinov2Embeddings.interpolate_pos_encoding
    for px in (448, 224):
        x = torch.randn(1, 3, px, px)
        with torch.no_grad():
            got, want = compiled(x), emb(x)
            ours_pos = emb.interpolate_pos_encoding(want, px, px)
            hf_pos = hf_rule(emb, want, px, px)
        assert (got - want).abs().max().item() < ATOL
        assert (ours_pos - hf_pos).abs().max().item() > 100 * ATOL  # ATOL tells the two rules apart
    saved = emb.position_embeddings.detach().clone()
    try:
        with torch.no_grad():
            emb.position_embeddings.mul_(2)
            x = torch.randn(1, 3, 448, 448)
            assert (compiled(x) - emb(x)).abs().max().item() < ATOL
    finally:
        with torch.no_grad():
            emb.position_embeddings.copy_(saved)


def test_swiglu_matches_reference(tmp_path):
    # "swiglufused" needs xFormers only for its fused kernel; without it Meta falls back to the
    # plain SwiGLUFFN with the same w12/w3 weights and the same hidden-width rounding.
    ref = _reference(ffn_layer="swiglufused", seed=3)
    sd = ref.state_dict()
    assert sd["blocks.0.mlp.w12.weight"].shape[0] == 2 * 1024  # (int(1536 * 2/3) + 7) // 8 * 8
    path = tmp_path / "swiglu.pth"
    torch.save(sd, path)
    hf = load_meta_dinov2(path)
    assert hf.config.use_swiglu_ffn and hf.config.mlp_ratio == 4
    for px in (518, 448):
        want, got = _tokens(ref, hf, px)
        assert (want - got).abs().max().item() < ATOL


def test_chunked_checkpoint_equals_unchunked(tmp_path):
    flat = _reference(depth=4, seed=5)
    chunked = _reference(depth=4, block_chunks=2, seed=6)
    with torch.no_grad():  # copy flat's weights into the chunked layout module by module
        for name in ("cls_token", "pos_embed", "mask_token"):
            getattr(chunked, name).copy_(getattr(flat, name))
        chunked.patch_embed.load_state_dict(flat.patch_embed.state_dict())
        chunked.norm.load_state_dict(flat.norm.state_dict())
        for chunk in chunked.blocks:
            for i, blk in enumerate(chunk):
                if not isinstance(blk, torch.nn.Identity):
                    blk.load_state_dict(flat.blocks[i].state_dict())
    chunked_sd = chunked.state_dict()
    assert "blocks.1.3.attn.qkv.weight" in chunked_sd

    cfg = infer_dinov2_config(chunked_sd)
    assert cfg.num_hidden_layers == 4
    a = convert_meta_dinov2_state_dict(flat.state_dict(), infer_dinov2_config(flat.state_dict()))
    b = convert_meta_dinov2_state_dict(chunked_sd, cfg)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    path = tmp_path / "chunked.pth"
    torch.save(chunked_sd, path)
    want, got = _tokens(chunked, load_meta_dinov2(path), 448)
    assert (want - got).abs().max().item() < ATOL


def test_teacher_checkpoint_nesting(tmp_path):
    ref = _reference(depth=1, seed=7)
    nested = {"teacher": {f"backbone.{k}": v for k, v in ref.state_dict().items()}}
    nested["teacher"]["dino_head.last_layer.weight"] = torch.zeros(4, 4)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save(nested, path)
    want, got = _tokens(ref, load_meta_dinov2(path), 224)
    assert (want - got).abs().max().item() < ATOL


# ----------------------------------------------------------------------------- key sets


def _assert_keys_match(meta_sd, expected_cls):
    cfg = infer_dinov2_config(meta_sd)
    converted = convert_meta_dinov2_state_dict(meta_sd, cfg)
    model = expected_cls(cfg)
    hf_sd = model.state_dict()
    missing = sorted(hf_sd.keys() - converted.keys())
    unexpected = sorted(converted.keys() - hf_sd.keys())
    assert not missing and not unexpected, f"missing={missing} unexpected={unexpected}"
    for key, value in converted.items():
        assert value.shape == hf_sd[key].shape, key
    return cfg, converted


def test_keys_plain():
    cfg, _ = _assert_keys_match(_reference(depth=2).state_dict(), Dinov2Model)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 2, 6)
    assert (cfg.patch_size, cfg.image_size, cfg.mlp_ratio, cfg.layer_norm_eps) == (14, 518, 4, 1e-6)
    assert not cfg.use_swiglu_ffn


def test_keys_swiglu():
    cfg, converted = _assert_keys_match(_reference(depth=2, ffn_layer="swiglu").state_dict(), Dinov2Model)
    assert cfg.use_swiglu_ffn
    assert converted["encoder.layer.0.mlp.gate_proj.weight"].shape == (1024, EMBED_DIM)


def test_keys_registers(tmp_path):
    # The 2023 dinov2 package has no register tokens, so the *_reg4 layout is built by hand here
    # (Meta's later code only adds `register_tokens` of shape (1, R, C)); the numbers of real
    # _reg4 files against Meta's current code are checked in tests/test_meta_reference.py.
    sd = dict(_reference(depth=2).state_dict())
    with pytest.raises(TypeError):
        vits.DinoVisionTransformer(num_register_tokens=4)
    sd["register_tokens"] = torch.randn(1, 4, EMBED_DIM)
    cfg, converted = _assert_keys_match(sd, Dinov2WithRegistersModel)
    assert cfg.model_type == "dinov2_with_registers" and cfg.num_register_tokens == 4
    assert torch.equal(converted["embeddings.register_tokens"], sd["register_tokens"])

    path = tmp_path / "reg.pth"
    torch.save(sd, path)
    hf = load_meta_dinov2(path)
    assert isinstance(hf, Dinov2WithRegistersModel)
    # transformers' register interpolation already equals Meta's register code: left alone.
    assert not hasattr(hf.embeddings, "_sam2_vitplug_pos_interp")
    with torch.no_grad():
        out = hf(pixel_values=torch.randn(1, 3, 224, 224)).last_hidden_state
    assert out.shape == (1, 1 + 4 + 16 * 16, EMBED_DIM)


# ----------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_meta_dinov2(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    noise = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    path.write_bytes(noise.numpy().tobytes())
    with pytest.raises(ValueError, match="corrupt.pth.*not a torch checkpoint"):
        load_meta_dinov2(path)


def test_resnet_state_dict(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError) as info:
        load_meta_dinov2(path)
    msg = str(info.value)
    assert "resnet18.pth" in msg and "conv1.weight" in msg and "cls_token" in msg


def test_incomplete_dinov2_state_dict(tmp_path):
    sd = dict(_reference(depth=1).state_dict())
    del sd["norm.weight"]
    path = tmp_path / "no_final_norm.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="no_final_norm.pth.*missing.*layernorm.weight"):
        load_meta_dinov2(path)


def test_random_keys(tmp_path):
    path = tmp_path / "random_keys.pth"
    torch.save({"foo": torch.zeros(3), "bar.baz": torch.ones(2)}, path)
    with pytest.raises(ValueError, match="random_keys.pth.*'foo'"):
        load_meta_dinov2(path)


# ----------------------------------------------------------------------------- pos_embed helper


def test_meta_interpolate_pos_embed_shapes_and_reference():
    ref = _reference(depth=1, seed=9)
    pos = ref.pos_embed.detach()
    out = meta_interpolate_pos_embed(pos, 20, 11)
    assert out.shape == (1, 1 + 20 * 11, EMBED_DIM)
    assert torch.equal(out[:, :1], pos[:, :1])
    assert meta_interpolate_pos_embed(pos, 37, 37) is pos  # native grid: unchanged
    for gh, gw in ((32, 32), (16, 16), (20, 11)):
        x = torch.zeros(1, 1 + gh * gw, EMBED_DIM)
        with torch.no_grad():
            want = ref.interpolate_pos_encoding(x, gh * PATCH, gw * PATCH)  # Meta's args: (x, H, W)
        assert torch.equal(meta_interpolate_pos_embed(pos, gh, gw), want), (gh, gw)
    half = meta_interpolate_pos_embed(pos.to(torch.bfloat16), 16, 16)
    assert half.dtype == torch.bfloat16 and half.shape == (1, 1 + 256, EMBED_DIM)
