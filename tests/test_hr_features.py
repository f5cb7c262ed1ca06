"""High-resolution features (docs/architecture.md section 5): transform sets, exact inverse consistency,
K=1 == bilinear, stride reduction per family, memory budget chunking, the trunk's
``transform_avg`` mode, the matcher's ``hr_transforms`` and the ``features`` command.

Tolerances: 1e-5 absolute where two float32 computations of the same bilinear sampling are
compared (our weights are computed in float64 and rounded once, PyTorch's source index in
float32; features here are O(1), so rounding differences are ~1e-6); exact equality only where
the same ops run on the same data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sam2_vitplug.encoders import load_encoder
from sam2_vitplug.modeling import ViTTrunkMultiScale
from sam2_vitplug.modeling.hr_features import HRFeatureExtractor, estimate_vit_bytes, parse_bytes
from sam2_vitplug.modeling.pyramid import UPSAMPLE_MODES, MultiScalePyramid
from sam2_vitplug.modeling.stride import check_stride_reduction, patch_conv, reduced_stride
from sam2_vitplug.modeling.transforms import (
    Transform,
    TransformSet,
    apply_transforms,
    average_maps,
    axis_weights,
    make_transforms,
    supported_counts,
)

from conftest import TINY_OUT_DIMS

TOL = 1e-5
ALL_FAMILIES = ["dinov2", "dinov2_reg", "dinov3", "ijepa", "vit"]


@pytest.fixture(scope="module")
def encoders(tiny_models, tmp_path_factory):
    """The conftest tiny models plus a tiny generic transformers ViT (family ``vit``, patch 16)."""
    import transformers as T

    out = {name: load_encoder(path) for name, path in tiny_models.items()}
    torch.manual_seed(0)
    vit_dir = tmp_path_factory.mktemp("tiny_generic_vit")
    T.ViTModel(T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           patch_size=16, image_size=224)).save_pretrained(vit_dir)
    out["vit"] = load_encoder(vit_dir)
    assert out["vit"].family.name == "vit"
    return out


def _extractor(encoders, name, **kw) -> HRFeatureExtractor:
    loaded = encoders[name]
    return HRFeatureExtractor(loaded.model.eval(), loaded.family, **kw)


def _image(patch: int, gh: int = 5, gw: int = 4, batch: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, gh * patch, gw * patch, generator=gen)


# ---- transform sets --------------------------------------------------------------------------
@pytest.mark.parametrize("directions", [4, 8])
def test_every_supported_k_is_balanced_and_distinct(directions):
    for k in supported_counts(directions):
        tset = make_transforms(k, 14, shift=3, directions=directions)
        assert tset.k == k == len(set(tset.transforms))
        assert sum(t.dy for t in tset) == 0 and sum(t.dx for t in tset) == 0  # no net shift
        assert sum(t.flip for t in tset) in (0, k // 2)
        assert all(max(abs(t.dy), abs(t.dx)) in (0, 3) for t in tset)
        if any(t.is_identity for t in tset):
            assert tset[0].is_identity


def test_default_directions_and_shift():
    assert make_transforms(4, 14).directions == 4 and make_transforms(16, 14).directions == 8
    assert make_transforms(8, 14).directions == 4  # 4 shifts x flips
    assert make_transforms(8, 16, directions=8).k == 8
    assert make_transforms(4, 14).shift == 4 and make_transforms(4, 16).shift == 5  # a third of the patch
    assert make_transforms(1, 14)[0].is_identity


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 6}, r"K=6 .*not supported.*1, 2, 4, 5, 8, 10.*1, 2, 8, 9, 16, 18"),
    ({"k": 16, "directions": 4}, r"K=16 .*4 directions.*directions=8"),
    ({"k": 0}, "positive int"),
    ({"k": 4, "shift": 7}, r"shift 7 px >= patch/2 = 7 .*use 1\.\.6"),
    ({"k": 4, "shift": 0}, "positive int"),
    ({"k": 4, "directions": 6}, "directions must be 4 or 8"),
    ({"k": 4, "border": "zeros"}, "border must be one of"),
])
def test_bad_transform_settings_raise(kwargs, match):
    k = kwargs.pop("k")
    with pytest.raises(ValueError, match=match):
        make_transforms(k, 14, **kwargs)


def test_transform_apply_borders():
    x = torch.arange(2 * 3 * 7 * 9, dtype=torch.float32).reshape(2, 3, 7, 9)
    t = Transform(2, -3)
    assert torch.equal(t.apply(x, "periodic"), torch.roll(x, (2, -3), (-2, -1)))
    y = t.apply(x, "reflect")
    assert y.shape == x.shape
    assert torch.equal(y[..., 2:, :6], x[..., :5, 3:])  # content moved down 2, left 3
    assert torch.equal(y[..., 0, :6], x[..., 2, 3:])  # reflected row (row 1 mirrored about row 0... of the pad)
    assert torch.equal(Transform(0, 0, True).apply(x), x.flip(-1))


# ---- exact geometry -------------------------------------------------------------------------
@pytest.mark.parametrize("grid, out", [(5, 5), (5, 70), (5, 33), (1, 9), (7, 13)])
def test_identity_weights_equal_bilinear_interpolate(grid, out):
    maps = torch.randn(2, 3, grid, grid + 1)
    ay = axis_weights(out, grid, grid * 14, patch=14, stride=14)
    ax = axis_weights(out + 3, grid + 1, (grid + 1) * 14, patch=14, stride=14)
    ours = ay @ maps @ ax.T
    ref = F.interpolate(maps, size=(out, out + 3), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)
    assert torch.allclose(ay.sum(1), torch.ones(out), atol=1e-6)  # rows are convex weights


@pytest.mark.parametrize("name", ALL_FAMILIES)
def test_k1_identity_equals_plain_bilinear(encoders, name):
    ext = _extractor(encoders, name, transforms=1)
    x = _image(ext.patch_size, batch=2)
    with torch.inference_mode():
        maps = ext.token_maps(x)
        for target in [(70, 56), (33, 21), tuple(x.shape[-2:])]:
            ref = F.interpolate(maps, size=target, mode="bilinear", align_corners=False)
            out = ext(x, target)
            assert out.dtype == maps.dtype and out.shape == ref.shape
            torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("border", ["reflect", "periodic"])
def test_each_transform_is_exactly_inverted(encoders, border):
    """Shifting (flipping) the input by a transform's amount shifts the output accordingly: the
    per-transform map our averaging uses equals the plain full-resolution bilinear map of the
    transformed image, read back at the pixels the content moved to."""
    ext = _extractor(encoders, "dinov2", transforms=1)
    x = _image(14, gh=4, gw=5)
    height, width = x.shape[-2:]
    tset = make_transforms(18, 14, shift=5, directions=8, border=border)
    rows = torch.arange(height)[:, None]
    cols = torch.arange(width)[None, :]
    with torch.inference_mode():
        for tr in tset:
            maps = ext.token_maps(tr.apply(x, border))
            plain = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
            single = TransformSet((tr,), border, tset.shift, tset.directions)
            ours = average_maps(maps, single, (height, width), (height, width), patch=14)
            src_r = rows + tr.dy
            src_c = (width - 1 - cols if tr.flip else cols) + tr.dx
            if border == "periodic":
                src_r, src_c = src_r % height, src_c % width
            valid = (src_r >= 0) & (src_r < height) & (src_c >= 0) & (src_c < width)
            expected = plain[0][:, src_r.clamp(0, height - 1), src_c.clamp(0, width - 1)]
            diff = (ours[0] - expected).abs().amax(0)[valid]
            assert valid.float().mean() > 0.7, tr  # the comparison covers most pixels
            assert diff.max() < TOL, (str(tr), float(diff.max()))


@pytest.mark.parametrize("border", ["reflect", "periodic"])
def test_averaging_reproduces_a_linear_image(border):
    """A translation-equivariant 'encoder' (mean over each patch) of a linear ramp gives the
    ramp's value at every patch centre; every transform, correctly inverted, then gives the
    ramp exactly in the interior, and so does the average. A wrong sign or half-pixel offset
    in any inversion would add a constant error of the shift's size."""
    patch, gh, gw = 14, 6, 7
    yy, xx = torch.meshgrid(torch.arange(gh * patch) + 0.5, torch.arange(gw * patch) + 0.5, indexing="ij")
    x = torch.stack([0.3 * yy - 0.7 * xx, 1.1 * xx, 0.5 * yy + 2.0])[None]
    tset = make_transforms(18, patch, shift=5, directions=8, border=border)
    maps = F.avg_pool2d(apply_transforms(x, tset), patch)
    out = average_maps(maps, tset, tuple(x.shape[-2:]), tuple(x.shape[-2:]), patch=patch)
    margin = patch + tset.shift
    inner = (slice(None), slice(None), slice(margin, -margin), slice(margin, -margin))
    torch.testing.assert_close(out[inner], x[inner], atol=1e-4, rtol=0)  # values up to ~100: float32 matmuls


def test_averaging_is_differentiable():
    tset = make_transforms(4, 14)
    maps = torch.randn(8, 3, 4, 4, requires_grad=True)
    average_maps(maps, tset, (56, 56), (28, 28), patch=14).square().sum().backward()
    assert maps.grad is not None and maps.grad.abs().sum() > 0


# ---- extractor: every family, chunking and bad input ----------------------------------------
@pytest.mark.parametrize("name", ALL_FAMILIES)
def test_transform_average_every_family(encoders, name):
    ext = _extractor(encoders, name, transforms=8)
    x = _image(ext.patch_size, batch=2)
    with torch.inference_mode():
        out = ext(x)
        plain = F.interpolate(ext.token_maps(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
    assert out.shape == plain.shape and out.dtype == plain.dtype and torch.isfinite(out).all()
    assert (out - plain).abs().mean() > 1e-3  # averaging changed the features
    # K=2 (identity + flip) is the mean of the plain map and the flipped-back map of the flipped image
    two = _extractor(encoders, name, transforms=2)
    with torch.inference_mode():
        flipped = F.interpolate(two.token_maps(x.flip(-1)), size=x.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(two(x), 0.5 * (plain + flipped.flip(-1)), atol=TOL, rtol=0)


def test_memory_budget_chunks_without_changing_the_result(encoders):
    ext = _extractor(encoders, "dinov2", transforms=16)
    x = _image(14, batch=2)
    whole = ext.plan(2, *x.shape[-2:], grad=False)
    assert whole.chunk == 32 and whole.forwards == 1
    budget = whole.fixed_bytes + 5 * whole.per_item_bytes
    chunked = _extractor(encoders, "dinov2", transforms=16, memory_budget=budget)
    plan = chunked.plan(2, *x.shape[-2:], grad=False)
    assert plan.chunk == 5 and plan.forwards == 7 and plan.estimated_bytes <= budget
    calls = []
    hook = chunked.vit.register_forward_hook(lambda m, a, k, o: calls.append(k["pixel_values"].shape[0]),
                                             with_kwargs=True)
    try:
        with torch.inference_mode():
            torch.testing.assert_close(chunked(x), ext(x), atol=TOL, rtol=0)
    finally:
        hook.remove()
    assert calls[:7] == [5, 5, 5, 5, 5, 5, 2]


def test_bad_requests_fail_before_any_forward(encoders):
    ext = _extractor(encoders, "dinov2", transforms=4, memory_budget="1KiB")
    calls = []
    hook = ext.vit.register_forward_hook(lambda *a: calls.append(1))
    try:
        x = _image(14)
        with pytest.raises(ValueError, match=r"memory budget 1\.00 KiB is too small for one image.*needs about"):
            ext(x)
        ok = _extractor(encoders, "dinov2", transforms=4)
        with pytest.raises(ValueError, match=r"smaller than the token grid 5x4"):
            ok(x, (4, 4))
        with pytest.raises(ValueError, match=r"larger than the image 70x56"):
            ok(x, (71, 56))
        with pytest.raises(ValueError, match="not a multiple of the patch size 14"):
            ok(torch.zeros(1, 3, 60, 56))
    finally:
        hook.remove()
    assert calls == []


def test_parse_bytes_and_estimate():
    assert parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("2GB") == 2 * 10**9 and parse_bytes(None) is None
    with pytest.raises(ValueError, match="like 512MiB"):
        parse_bytes("lots")
    import transformers as T

    cfg = T.Dinov2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128)
    one = estimate_vit_bytes(cfg, 100, torch.float32)
    assert estimate_vit_bytes(cfg, 200, torch.float32) == pytest.approx(2 * one, rel=0.01)  # linear with SDPA
    assert estimate_vit_bytes(cfg, 100, torch.bfloat16) < one
    assert estimate_vit_bytes(cfg, 100, torch.float32, grad=True) > 3 * one  # every block kept for backward


# ---- stride reduction ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_FAMILIES)
def test_stride_reduction_every_family(encoders, name):
    plain = _extractor(encoders, name, transforms=1)
    reduced = _extractor(encoders, name, transforms=1, stride_reduction=True)
    p = plain.patch_size
    x = _image(p)
    conv = patch_conv(plain.vit)
    attrs_before = (set(vars(plain.vit.embeddings)), set(vars(getattr(plain.vit, "rope_embeddings", plain.vit))))
    with torch.inference_mode():
        before = plain.token_maps(x)
        dense = reduced.token_maps(x)
        after = plain.token_maps(x)
        out = reduced(x, (33, 27))
    assert reduced.stride == p // 2 and dense.shape[-2:] == (2 * 5 - 1, 2 * 4 - 1)
    assert torch.equal(before, after) and tuple(conv.stride) == (p, p)  # everything restored
    assert attrs_before == (set(vars(plain.vit.embeddings)), set(vars(getattr(plain.vit, "rope_embeddings", plain.vit))))
    assert out.shape == (1, 32, 33, 27) and torch.isfinite(out).all()
    # the even-indexed tokens sit on the plain grid's patches: same pixels, so close features
    assert F.cosine_similarity(dense[..., ::2, ::2], before, dim=1).mean() > 0.5
    combined = _extractor(encoders, name, transforms=4, stride_reduction=True)
    assert combined.tset.shift == p // 2 // 3  # a third of the reduced step
    with torch.inference_mode():
        assert combined(x).shape == (1, 32, *x.shape[-2:])


def test_stride_reduction_refuses_models_it_cannot_handle(encoders):
    class Config:
        patch_size = 14
        hidden_size = 8

    class NoPositions(torch.nn.Module):  # a patch conv but neither a position table nor RoPE
        def __init__(self):
            super().__init__()
            self.config = Config()
            self.embeddings = torch.nn.Module()
            self.embeddings.proj = torch.nn.Conv2d(3, 8, 14, 14)

    with pytest.raises(NotImplementedError, match="neither embeddings.interpolate_pos_encoding"):
        check_stride_reduction(NoPositions())
    odd = NoPositions()
    odd.config.patch_size = 15
    with pytest.raises(NotImplementedError, match="odd patch size 15"):
        check_stride_reduction(odd)
    with pytest.raises(ValueError, match="must divide the patch size"):
        with reduced_stride(encoders["dinov2"].model, 5):
            pass


# ---- trunk -----------------------------------------------------------------------------------
def _trunk(tiny_models, name="dinov2", **kw) -> ViTTrunkMultiScale:
    return ViTTrunkMultiScale(str(tiny_models[name]), out_dims=TINY_OUT_DIMS, **kw)


def test_trunk_transform_avg_k1_equals_bilinear(tiny_models):
    assert "transform_avg" in UPSAMPLE_MODES
    bilinear = _trunk(tiny_models, upsample_mode="bilinear")
    tavg = _trunk(tiny_models, upsample_mode="transform_avg", hr_transforms=1)
    tavg.load_state_dict(bilinear.state_dict())  # same parameter names
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        for a, b in zip(bilinear(x), tavg(x)):
            torch.testing.assert_close(b, a, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["dinov2_reg", "dinov3"])
def test_trunk_transform_avg_trains_through_the_k_batch(tiny_models, name):
    trunk = _trunk(tiny_models, name, upsample_mode="transform_avg", feature_layers=4, hr_transforms=4)
    assert trunk.hr_transforms.k == 4
    seen = []
    trunk.vit.register_forward_hook(lambda m, a, k, o: seen.append(k["pixel_values"].shape[0]), with_kwargs=True)
    x = torch.randn(2, 3, 64, 64)
    outs = trunk(x)
    assert seen == [8]  # one ViT forward of B*K images
    assert [tuple(o.shape[1:]) for o in outs] == [(8, 16, 16), (16, 8, 8), (32, 4, 4), (32, 2, 2)]
    sum(o.square().mean() for o in outs).backward()
    assert trunk.vit.embeddings.patch_embeddings.weight.grad.abs().sum() > 0 if name == "dinov3" else \
        trunk.vit.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert trunk.pyramid.to_s4.proj.weight.grad.abs().sum() > 0


def test_trunk_transform_avg_bad_settings(tiny_models):
    with pytest.raises(ValueError, match="K=3 transforms is not supported"):
        _trunk(tiny_models, upsample_mode="transform_avg", hr_transforms=3)
    with pytest.raises(ValueError, match="shift 8 px >= patch/2"):
        _trunk(tiny_models, "dinov3", upsample_mode="transform_avg", hr_shift=8)
    pyramid = MultiScalePyramid(32, TINY_OUT_DIMS, "transform_avg")
    with pytest.raises(ValueError, match="needs the averager"):
        pyramid([torch.zeros(1, 32, 2, 2)] * 4)


def test_training_flags_accept_transform_avg():
    from training_ext import flags

    out = flags.encoder_overrides(flags.EncoderFlags(encoder_upsample_mode="transform_avg"), "vit")
    assert out == ["++model.image_encoder.trunk.upsample_mode=transform_avg"]


# ---- the few-shot matcher --------------------------------------------------------------------
def test_matcher_hr_transforms(tiny_models, tmp_path):
    from sam2_vitplug.matching import FewShotPredictor, MemoryBank, Proposals, load_config, load_matcher

    matcher = load_matcher(str(tiny_models["dinov2"]), input_size=56)
    bank = MemoryBank(prototypes=F.normalize(torch.randn(2, 32), dim=-1), instances=torch.zeros(2, 32),
                      instance_labels=torch.tensor([0, 1]), class_ids=[1, 2], class_names=["a", "b"],
                      meta={"encoder": matcher.identity, "input_size": 56})
    lowres = torch.zeros(3, 32, 32)
    lowres[0, :16], lowres[1, 16:], lowres[2, :, :8] = 1, 1, 1
    proposals = Proposals(lowres, torch.tensor([[0, 0, 31, 15], [0, 16, 31, 31], [0, 0, 7, 31]]).float(),
                          torch.ones(3), (64, 64), None, None)
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    plain = FewShotPredictor(bank, None, matcher, load_config())
    hr = FewShotPredictor(bank, None, matcher, load_config({"scoring": {"hr_transforms": 4}}))
    f_plain, f_hr = plain.target_features(image, proposals), hr.target_features(image, proposals)
    assert f_plain.shape == (32, 4, 4) and f_hr.shape == (32, 32, 32)  # pooled at the mask grid
    out = hr.score(proposals, f_hr)
    assert len(out["keep"]) > 0
    with pytest.raises(ValueError, match="K=3 transforms is not supported"):
        FewShotPredictor(bank, None, matcher, load_config({"scoring": {"hr_transforms": 3}}))
    with pytest.raises(ValueError, match="cannot be combined with --shared-backbone"):
        FewShotPredictor(bank, None, matcher, load_config({"scoring": {"hr_transforms": 4},
                                                           "proposals": {"shared_backbone": True}}))


def test_fewshot_run_flag_sets_the_config_key():
    from sam2_vitplug.cli import build_parser

    args = build_parser().parse_args(["fewshot", "run", "--bank", "b", "--images", "i", "--out", "o",
                                      "--hr-transforms", "8"])
    assert args.hr_transforms == 8


# ---- features command ------------------------------------------------------------------------
@pytest.fixture()
def image_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, size in enumerate([(50, 70), (64, 40)]):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_features_command_folder(tiny_models, image_dir, tmp_path):
    from safetensors import safe_open

    from sam2_vitplug.cli import main

    out, pca = tmp_path / "feats", tmp_path / "pca"
    rc = main(["features", str(image_dir), "--encoder", str(tiny_models["dinov3"]), "--transforms", "4",
               "--input-size", "64", "--out-stride", "2", "--out-dtype", "fp32", "--out", str(out), "--pca", str(pca),
               "--quiet"])
    assert rc == 0
    for stem, size, photo in [("im0", (48, 64), (50, 70)), ("im1", (64, 48), (64, 40))]:
        with safe_open(str(out / f"{stem}.safetensors"), "pt") as f:
            feats, meta = f.get_tensor("features"), f.metadata()
        assert feats.shape == (32, size[0] // 2, size[1] // 2) and feats.dtype == torch.float32
        assert json.loads(meta["transforms"]) == 4 and json.loads(meta["input_size"]) == list(size)
        png = np.asarray(Image.open(pca / f"{stem}.png"))
        assert png.shape == (*photo, 3) and png.std() > 10  # at the photo's own size
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_features_command_single_file_stride_reduction(tiny_models, image_dir, tmp_path):
    from safetensors import safe_open

    from sam2_vitplug.cli import main

    out = tmp_path / "one.safetensors"
    rc = main(["features", str(image_dir / "im0.png"), "--encoder", str(tiny_models["ijepa"]), "--transforms", "1",
               "--stride-reduction", "--input-size", "56", "--out-stride", "1", "--out", str(out),
               "--pca", str(tmp_path / "one.png"),
               "--quiet"])
    assert rc == 0
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("features").shape == (32, 42, 56)
        assert f.metadata()["patch_stride"] == "7"
    assert (tmp_path / "one.png").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--transforms", "6"], "K=6 transforms is not supported"),
    (["--shift", "7"], "shift 7 px >= patch/2"),
    (["--out-stride", "20"], "smaller than the token grid"),
    (["--memory-budget", "1KiB"], "too small for one image"),
])
def test_features_command_bad_input_writes_nothing(tiny_models, image_dir, tmp_path, capsys, extra, message):
    from sam2_vitplug.cli import main

    out = tmp_path / "feats"
    rc = main(["features", str(image_dir), "--encoder", str(tiny_models["dinov2"]), "--input-size", "70",
               "--out", str(out), "--quiet", *extra])
    assert rc == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_features_command_bad_paths(tiny_models, image_dir, tmp_path, capsys):
    from sam2_vitplug.cli import main

    assert main(["features", str(tmp_path / "nope.png"), "--encoder", "x", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["features", str(image_dir), "--encoder", "x", "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "names one file but 2 images" in capsys.readouterr().err
    assert main(["features", str(image_dir / "im0.png"), "--encoder", "x", "--out", str(tmp_path / "o.pt")]) == 2
    assert "looks like a .pt file, but features are written as .safetensors" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


def _photo(path: Path, size: int = 320) -> Path:
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_features_defaults_keep_a_photo_file_small_and_full_resolution_is_one_flag_away(tiny_models, tmp_path):
    from safetensors import safe_open

    from sam2_vitplug.cli import main

    photo = _photo(tmp_path / "photo.jpg")
    base = ["features", str(photo), "--encoder", str(tiny_models["dinov2"]), "--transforms", "1", "--quiet"]
    # --pca x.jpg writes that JPEG (at the photo's size, beside it), not a folder named x.jpg
    assert main([*base, "--out", str(tmp_path / "f.safetensors"), "--pca", str(tmp_path / "x.jpg"),
                 "--pca-beside"]) == 0
    assert (tmp_path / "f.safetensors").stat().st_size < 320 * 320 * 3  # below the decoded image
    assert (tmp_path / "x.jpg").is_file() and Image.open(tmp_path / "x.jpg").size == (640, 320)
    with safe_open(str(tmp_path / "f.safetensors"), "pt") as f:
        default = f.get_tensor("features")
    assert default.dtype == torch.float32 and 37 <= default.shape[-1] < 518  # between the token grid and full size
    assert main([*base, "--out", str(tmp_path / "full.safetensors"), "--out-stride", "1"]) == 0
    with safe_open(str(tmp_path / "full.safetensors"), "pt") as f:
        assert f.get_tensor("features").shape == (32, 518, 518)  # the 518 px input
    assert main([*base, "--out", str(tmp_path / "half.safetensors"), "--out-dtype", "fp16"]) == 0
    with safe_open(str(tmp_path / "half.safetensors"), "pt") as f:
        half = f.get_tensor("features")
    # fp16 halves the bytes per value, so the automatic stride is finer and the file still fits
    assert half.dtype == torch.float16 and half.shape[-1] > default.shape[-1]
    assert (tmp_path / "half.safetensors").stat().st_size < 320 * 320 * 3


@pytest.mark.parametrize("case, message", [
    ("input_size_13", "--input-size 13 is smaller than this ViT's patch (14 px); use at least 14"),
    ("input_size_100000", "needs about"),
    ("truncated", "cannot be decoded"),
])
def test_features_bad_sizes_and_images_are_one_line(tiny_models, tmp_path, capsys, case, message):
    from sam2_vitplug.cli import main

    photo = _photo(tmp_path / "photo.jpg", size=64)
    extra = {"input_size_13": ["--input-size", "13"], "input_size_100000": ["--input-size", "100000"],
             "truncated": []}[case]
    if case == "truncated":
        photo.write_bytes(photo.read_bytes()[:300])
    rc = main(["features", str(photo), "--encoder", str(tiny_models["dinov2"]), "--out", str(tmp_path / "o"),
               "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and message in err[-1] and err[-1].startswith("sam2-vitplug: error:"), err
    if case == "input_size_100000":
        assert "lower --input-size" in err[-1]
    assert not (tmp_path / "o").exists()


def test_pca_picture_is_deterministic_and_follows_the_main_component():
    from sam2_vitplug.feature_maps import pca_rgb

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 20), torch.linspace(-1, 1, 30), indexing="ij")
    feats = torch.stack([5 * xx, 2 * yy, 0.1 * xx * yy, torch.zeros_like(xx)])
    a = pca_rgb(feats)
    assert a.shape == (20, 30, 3) and a.dtype == np.uint8
    assert np.corrcoef(a[..., 0].ravel(), xx.numpy().ravel())[0, 1] ** 2 > 0.95  # red = the x ramp
    assert np.array_equal(a, pca_rgb(feats))
    # the eigenvector signs are fixed from the loadings, so reordering channels keeps the colours
    b = pca_rgb(feats[[3, 1, 0, 2]])
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.mark.slow
def test_bench_and_probe_quick(tmp_path):
    import subprocess

    tools = Path(__file__).resolve().parents[1] / "tools"
    env = dict(__import__("os").environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for tool, name in [("bench_hr_features.py", "bench.json"), ("hr_probe.py", "probe.json")]:
        out = tmp_path / name
        proc = subprocess.run([sys.executable, str(tools / tool), "--quick", "--out", str(out)], capture_output=True,
                              text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        data = json.loads(out.read_text())
        assert data["rows"] and data["status"] == "complete"
        assert "bilinear" in proc.stdout and not list(tmp_path.glob("*.tmp"))
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["summary"]["budget_cells"] == 1 and bench["summary"]["budget_respected"] is True
    rows = {r["variant"]: r for r in bench["rows"]}
    assert rows["tavg4"]["forwards"] == 2 and rows["stride/2"]["tokens"] == 1 + 31 * 31  # 224 px at stride 7
    assert 1.0 < rows["tavg4"]["x_plainK"] < 3.0  # the ViT is most of the call even at depth 1 and 224 px
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert [r["variant"] for r in probe["rows"]] == ["bilinear", "tavg4", "stride/2"]
    assert all(0.0 <= r["miou"] <= 1.0 and 0.0 <= r["boundary_miou"] <= 1.0 for r in probe["rows"])
