"""ViTTrunkMultiScale: geometry, token handling, freezing, dtypes, errors, compile."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAMILIES, TINY, TINY_OUT_DIMS

from sam2_vitplug.modeling import ViTTrunkMultiScale
from sam2_vitplug.modeling.trunk import resolve_feature_layers, resolve_out_dims

SIZES = [(128, 128), (256, 192), (160, 320), (208, 144), (1024 // 4, 1024 // 4)]


def make_trunk(tiny_models, name="dinov2", **kw) -> ViTTrunkMultiScale:
    kw.setdefault("out_dims", TINY_OUT_DIMS)
    return ViTTrunkMultiScale(str(tiny_models[name]), **kw)


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("mode", ["bilinear", "deconv"])
def test_pyramid_geometry_exact(tiny_models, name, mode):
    trunk = make_trunk(tiny_models, name, upsample_mode=mode)
    assert trunk.encoder_type == FAMILIES[name][0]
    for h, w in SIZES:
        outs = trunk(torch.randn(2, 3, h, w))
        assert len(outs) == 4
        expected = [(h // 4, w // 4), (h // 8, w // 8), (h // 16, w // 16), (math.ceil(h / 32), math.ceil(w / 32))]
        assert [tuple(o.shape[-2:]) for o in outs] == expected, (h, w)
        # channels: forward order is high-res first, channel_list is low-res first
        assert [o.shape[1] for o in outs] == list(reversed(trunk.channel_list))
        assert [f["num_chs"] for f in trunk.feature_info] == [o.shape[1] for o in outs]
        assert [f["reduction"] for f in trunk.feature_info] == [4, 8, 16, 32]
        assert all(o.shape[0] == 2 for o in outs)


@pytest.mark.parametrize("name,patch", [("dinov2", 14), ("dinov3", 16), ("ijepa", 14)])
def test_vit_runs_at_grid_times_patch(tiny_models, name, patch):
    trunk = make_trunk(tiny_models, name)
    assert trunk.patch_size == patch
    assert trunk.vit_input_size(1024, 1024) == (64 * patch, 64 * patch)  # 896 for patch 14
    assert trunk.vit_input_size(512, 768) == (32 * patch, 48 * patch)
    seen = {}

    def record(module, args, kwargs):
        seen["shape"] = kwargs["pixel_values"].shape

    handle = trunk.vit.register_forward_pre_hook(record, with_kwargs=True)
    trunk(torch.randn(1, 3, 256, 192))
    handle.remove()
    assert tuple(seen["shape"][-2:]) == (16 * patch, 12 * patch)


def test_prefix_tokens_stripped_per_family(tiny_models):
    # the stride-16 map must be the *patch* tokens: CLS and registers stripped, none for I-JEPA
    expected_prefix = {"dinov2": 1, "dinov2_reg": 5, "dinov3": 5, "ijepa": 0}
    for name, prefix in expected_prefix.items():
        trunk = make_trunk(tiny_models, name).eval()
        assert trunk.num_prefix_tokens == prefix
        x = torch.randn(1, 3, 128, 96)
        h, w = trunk.vit_input_size(128, 96)
        xr = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                                             antialias=trunk.patch_size < 16)
        kw = dict(trunk.family.forward_kwargs)
        tokens = trunk.vit(pixel_values=xr, **kw).last_hidden_state
        assert tokens.shape[1] == prefix + 8 * 6
        with torch.no_grad():
            (m16,) = {id(m): m for m in trunk.forward_vit_maps(x)}.values()
        ref = tokens[:, prefix:].transpose(1, 2).reshape(1, TINY["hidden_size"], 8, 6)
        torch.testing.assert_close(m16, ref, rtol=0, atol=1e-6)


def test_input_not_multiple_of_16(tiny_models):
    trunk = make_trunk(tiny_models)
    with pytest.raises(ValueError, match="multiple of 16"):
        trunk(torch.randn(1, 3, 130, 128))


def test_out_dims_auto_and_errors():
    assert resolve_out_dims("auto", 1024) == [1024, 1024, 512, 256]
    assert resolve_out_dims(None, 384) == [384, 384, 192, 96]
    assert resolve_out_dims("64,32,16,8", 384) == [64, 32, 16, 8]
    for bad in ([1, 2, 3], [1, 2, 3, 0], "a,b,c,d", [1.5, 2, 3, 4]):
        with pytest.raises(ValueError, match="out_dims"):
            resolve_out_dims(bad, 384)


def test_feature_layers(tiny_models):
    assert resolve_feature_layers(None, 24) == (23, 23, 23, 23)
    assert resolve_feature_layers(4, 24) == (5, 11, 17, 23)
    assert resolve_feature_layers([-4, -3, -2, -1], 12) == (8, 9, 10, 11)
    with pytest.raises(ValueError, match="out of range"):
        resolve_feature_layers([0, 1, 2, 24], 24)
    with pytest.raises(ValueError, match="1 or 4"):
        resolve_feature_layers(3, 24)
    # intermediate taps change the high-res levels but not a last-layer level
    torch.manual_seed(0)
    last = make_trunk(tiny_models).eval()
    torch.manual_seed(0)
    inter = make_trunk(tiny_models, feature_layers=[0, 1, 2, 3]).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a, b = last(x), inter(x)
    torch.testing.assert_close(a[3], b[3], rtol=0, atol=1e-6)  # stride 32 from the last block in both
    assert (a[0] - b[0]).abs().max() > 1e-3


def test_layer_ids_for_layer_decay(tiny_models):
    for name in ("dinov2", "dinov3", "ijepa"):
        trunk = make_trunk(tiny_models, name)
        n = trunk.get_num_layers()
        assert n == TINY["num_hidden_layers"]
        ids = {}
        for pname, _ in trunk.named_parameters():
            ids[pname] = trunk.get_layer_id("image_encoder.trunk." + pname)
        assert {v for k, v in ids.items() if k.startswith("vit.embeddings")} == {0}
        blocks = trunk.family.resolve_blocks_path(trunk.vit)
        for i in range(n):
            in_block = [v for k, v in ids.items() if k.startswith(f"vit.{blocks}.{i}.")]
            assert in_block and set(in_block) == {i + 1}, (name, blocks, i)
        assert {v for k, v in ids.items() if k.startswith("pyramid.")} == {n + 1}
        assert max(ids.values()) <= n + 1  # upstream builds n + 2 decay values


def test_freeze_vit_no_grad_no_change(tiny_models):
    trunk = make_trunk(tiny_models, freeze_vit=True)
    trunk.train()
    assert not trunk.vit.training and trunk.pyramid.training
    before = {k: v.clone() for k, v in trunk.vit.state_dict().items()}
    pyr_before = {k: v.clone() for k, v in trunk.pyramid.state_dict().items()}
    opt = torch.optim.SGD([p for p in trunk.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        loss = sum(o.square().mean() + o.mean() for o in trunk(torch.randn(2, 3, 128, 128)))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(p.grad is None for p in trunk.vit.parameters())
    assert all(torch.equal(v, trunk.vit.state_dict()[k]) for k, v in before.items())
    changed = [k for k, v in pyr_before.items() if not torch.equal(v, trunk.pyramid.state_dict()[k])]
    assert changed, "the pyramid must still train when the ViT is frozen"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_trainable_parameter_gets_a_gradient(tiny_models, name):
    # DDP without find_unused_parameters fails if a trainable parameter never gets a gradient
    trunk = make_trunk(tiny_models, name, feature_layers=4)
    sum(o.mean() for o in trunk(torch.randn(1, 3, 64, 64))).backward()
    no_grad = [n for n, p in trunk.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad
    assert sum(p.requires_grad for p in trunk.vit.parameters()) > 0.9 * len(list(trunk.vit.parameters()))


@pytest.mark.parametrize("dtype_name,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)])
def test_force_dtype(tiny_models, dtype_name, dtype):
    trunk = make_trunk(tiny_models, force_dtype=dtype_name, freeze_vit=True).eval()
    assert {p.dtype for p in trunk.vit.parameters()} == {dtype}
    assert {p.dtype for p in trunk.pyramid.parameters()} == {torch.float32}  # stays trainable
    with torch.no_grad():
        outs = trunk(torch.randn(1, 3, 128, 128))
    assert {o.dtype for o in outs} == {dtype}
    assert all(torch.isfinite(o.float()).all() for o in outs)


def test_force_dtype_rejects_unknown(tiny_models):
    with pytest.raises(ValueError, match="force_dtype"):
        make_trunk(tiny_models, force_dtype="int8")


def test_autocast_cpu_bf16(tiny_models):
    trunk = make_trunk(tiny_models).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = trunk(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = trunk(x)
    for r, o in zip(ref, out):
        # bf16 keeps 8 bits of mantissa: relative error ~4e-3 per op, a few ops deep
        assert (o.float() - r).abs().max() <= 0.05 * r.abs().max() + 1e-3


def test_torch_compile_matches_eager(tiny_models):
    trunk = make_trunk(tiny_models, "dinov3").eval()
    x = torch.randn(1, 3, 128, 128)
    compiled = torch.compile(trunk, backend="aot_eager", fullgraph=False)
    with torch.no_grad():
        ref = trunk(x)
        out = compiled(x)
    for r, o in zip(ref, out):
        # same ops in fp32, possibly fused/reordered: rounding-level differences only
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_trunk_errors(tiny_models, tmp_path):
    with pytest.raises(KeyError, match="installed encoder types: .*dino"):
        make_trunk(tiny_models, encoder_type="resnet")
    with pytest.raises(ValueError, match="'dinov3_vit' model but encoder_type='dino'"):
        make_trunk(tiny_models, "dinov3", encoder_type="dino")
    with pytest.raises(ValueError, match="upstream SAM2 trunk"):
        make_trunk(tiny_models, encoder_type="hiera")
    with pytest.raises(ValueError, match="upsample_mode"):
        make_trunk(tiny_models, upsample_mode="nearest")


def test_verbose_prints_shapes_once_per_size(tiny_models, capsys):
    trunk = make_trunk(tiny_models, "dinov3", verbose=True)
    for _ in range(2):
        trunk(torch.randn(1, 3, 128, 96))
    err = capsys.readouterr().err
    assert err.count("[ViTTrunkMultiScale]") == 1
    assert "input 128x96 -> ViT 128x96 (8x6 tokens" in err and "s4: (8, 32, 24)" in err
    trunk(torch.randn(1, 3, 64, 64))
    assert capsys.readouterr().err.count("[ViTTrunkMultiScale]") == 1


def test_layernorm2d_equals_upstream():
    from sam2.modeling.sam2_utils import LayerNorm2d as UpstreamLayerNorm2d

    from sam2_vitplug.modeling.pyramid import LayerNorm2d

    ours, theirs = LayerNorm2d(24), UpstreamLayerNorm2d(24)
    with torch.no_grad():
        ours.weight.normal_(), ours.bias.normal_()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 24, 9, 7) * 3 + 1
    # same math, different reduction order: fp32 rounding only
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_train_mode_forwards_are_deterministic_unless_augmentation_is_asked(tiny_models, name):
    """DINOv3's transformers model jitters its RoPE coordinates in train mode (pos_embed_rescale
    2.0 by default); the trunk keeps that off unless ``train_augmentation=True``. Other families
    have no such module: their train-mode forwards are identical either way."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    for augment in (False, True):
        trunk = ViTTrunkMultiScale(str(tiny_models[name]), out_dims=TINY_OUT_DIMS, train_augmentation=augment)
        trunk.train()
        with torch.no_grad():
            first, second = trunk(x)[2], trunk(x)[2]
            trunk.eval()
            evaluated = trunk(x)[2], trunk(x)[2]
        assert torch.equal(*evaluated), "eval mode never augments"
        if augment and name == "dinov3":
            # a random rescale in [1/2, 2] of the RoPE coordinates moves every token; 1e-6 is far
            # below that and far above float noise of two identical forwards (which is exactly 0)
            assert (first - second).abs().max() > 1e-6
        else:
            assert torch.equal(first, second)
