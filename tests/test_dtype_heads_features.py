"""Reduced-precision inference for the segmentation heads and the HR features (issue 17):
fp32 is the exact path, bf16 agrees with it within stated tolerances, fp16 on a CPU is one
clear line, outputs that callers store or threshold are fp32, and reruns give the same bytes.

Tolerances: bf16 keeps 8 significant bits, so every rounding is off by at most 2^-9 (0.2%)
relative. Through the tiny 4-block ViTs and a head, the measured error is about 0.5% of the
largest score or feature (docs/precision.md); the bounds below allow 2%, 4x
that. A pixel's class can flip only where fp32's top-two scores are closer than twice the
largest score error, which on the synthetic shapes is far below 1% of the pixels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_synthetic_dataset import DatasetSpec, make_dataset  # noqa: E402

from sam2_vitplug.encoders import load_encoder  # noqa: E402
from sam2_vitplug.heads.data import Normalize, load_rgb, pair_paths, write_class_masks_from_coco  # noqa: E402
from sam2_vitplug.heads.infer import compute_dtype, evaluate, predict_images, predict_scores  # noqa: E402
from sam2_vitplug.heads.metrics import metrics_from_confusion  # noqa: E402
from sam2_vitplug.heads.model import SegModelConfig, build_seg_model, load_seg_model  # noqa: E402
from sam2_vitplug.heads.train import TrainConfig, train  # noqa: E402
from sam2_vitplug.modeling.hr_features import HRFeatureExtractor  # noqa: E402
from sam2_vitplug.precision import autocast, lowp_bytes, lowp_weights, precast  # noqa: E402

REL_TOL = 0.02          # largest |bf16 - fp32| as a share of the largest |fp32| value
PIXEL_FLIP_TOL = 0.01   # share of pixels whose class differs
MIOU_TOL = 0.01         # |mIoU bf16 - mIoU fp32|
COSINE_MIN = 0.999      # per-position cosine similarity of the feature maps (mean)
M2F_TINY = ["head.num_queries=6", "head.hidden_dim=16", "head.mask_dim=16", "head.heads=2", "head.ffn_dim=32",
            "head.dec_layers=1"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("dtype_shapes")
    make_dataset(root / "ds", DatasetSpec(train=8, val=4, image_size=64, seed=3))
    for split in ("train", "val"):
        write_class_masks_from_coco(root / "ds" / split / "annotations.json", root / "masks" / split)
    return {"root": str(root), "train_images": str(root / "ds/train/images/*.jpg"),
            "train_masks": str(root / "masks/train/*.png"), "val_images": str(root / "ds/val/images/*.jpg"),
            "val_masks": str(root / "masks/val/*.png")}


@pytest.fixture(scope="module")
def trained_linear(tiny_models, shapes):
    """A linear head trained for a few steps (3 epochs of 2 steps) on the shapes: scores with
    real margins, not a random head's near-ties."""
    ckpt_dir = Path(shapes["root"]) / "ck_linear"
    model_cfg = SegModelConfig(head="linear", encoder=str(tiny_models["dinov2"]), num_classes=5, image_size=64)
    cfg = TrainConfig(image_paths=shapes["train_images"], mask_paths=shapes["train_masks"],
                      checkpoint_dir=str(ckpt_dir), epochs=3, warmup_epochs=1, batch_size=4, num_workers=0, lr=1e-2,
                      progress=False, device="cpu")
    train(model_cfg, cfg)
    return load_seg_model(ckpt_dir / "last.pt")


# ---- errors ----------------------------------------------------------------------------------
def test_fp16_on_cpu_is_one_line(tiny_models, trained_linear):
    loaded = load_encoder(tiny_models["dinov2"])
    with pytest.raises(ValueError, match="fp16 needs a CUDA or MPS device") as err:
        HRFeatureExtractor(loaded.model.eval(), loaded.family, dtype="fp16")
    assert "\n" not in str(err.value) and "bf16" in str(err.value)
    rgb = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="fp16 needs a CUDA or MPS device"):
        predict_scores(trained_linear, rgb, dtype="fp16")
    with pytest.raises(ValueError, match="not a dtype"):
        predict_scores(trained_linear, rgb, dtype="int8")
    with pytest.raises(ValueError, match="disagree"):
        compute_dtype(trained_linear, "bf16", torch.float16)
    assert compute_dtype(trained_linear, "fp32", torch.bfloat16) == "bf16"  # the older --amp spelling


# ---- pre-casting -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dinov2", "dinov2_reg", "dinov3", "ijepa"])
def test_precast_equals_plain_autocast_bit_for_bit_and_restores(tiny_models, name):
    """Autocast casts a linear's weight with the same rounding as the pre-cast copy, so the
    outputs must be equal, not close, for every family; convolutions stay fp32 (DINOv3 casts its
    pixels, and from them its RoPE tables, to the patch conv's weight dtype); afterwards the model
    holds its own fp32 parameters again, and a second call reuses the cached copies."""
    loaded = load_encoder(tiny_models[name])
    model, kwargs = loaded.model.eval(), dict(loaded.family.forward_kwargs)
    before = {k: (p, p.detach().clone()) for k, p in model.named_parameters()}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert linears and convs
    with torch.inference_mode():
        with autocast("bf16", "cpu"):
            plain = model(pixel_values=x, **kwargs).last_hidden_state
        for _ in range(2):  # the second call runs on the cached copies
            with lowp_weights(model, "bf16"), autocast("bf16", "cpu"):
                assert all(m.weight.dtype == torch.bfloat16 for m in linears)
                assert all(m.weight.dtype == torch.float32 for m in convs)
                pre = model(pixel_values=x, **kwargs).last_hidden_state
            assert torch.equal(plain, pre)
    assert lowp_bytes(model, "bf16", grad=False) == sum(2 * p.numel() for m in linears for p in m.parameters())
    with precast(False), lowp_weights(model, "bf16"):  # the benchmarks' autocast-only switch
        assert all(m.weight.dtype == torch.float32 for m in linears)
    for key, p in model.named_parameters():
        assert p is before[key][0] and p.dtype == torch.float32 and torch.equal(p, before[key][1]), key


# ---- HR features -----------------------------------------------------------------------------
def _features(loaded, x, **kw) -> torch.Tensor:
    with torch.inference_mode():
        return HRFeatureExtractor(loaded.model.eval(), loaded.family, transforms=4, **kw)(x, (x.shape[-2] // 2,
                                                                                             x.shape[-1] // 2))


def test_hr_features_fp32_is_the_exact_path(tiny_models):
    """fp32 = no autocast anywhere: equal to the extractor without a dtype and to a hand-made
    K=1 map (one plain ViT forward + bilinear interpolation)."""
    loaded = load_encoder(tiny_models["dinov2"])
    x = torch.randn(1, 3, 70, 56, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_features(loaded, x, dtype="fp32"), _features(loaded, x))
    with torch.inference_mode():
        one = HRFeatureExtractor(loaded.model.eval(), loaded.family, transforms=1, dtype="fp32")(x, (70, 56))
        tokens = loaded.model(pixel_values=x).last_hidden_state[:, 1:]
        grid = tokens.transpose(1, 2).reshape(1, -1, 5, 4)
        ref = F.interpolate(grid, size=(70, 56), mode="bilinear", align_corners=False)
    torch.testing.assert_close(one, ref, rtol=0, atol=1e-5)  # the test_hr_features K=1 tolerance


@pytest.mark.parametrize("name", ["dinov2", "dinov3"])
def test_hr_features_bf16_agrees_and_is_fp32(tiny_models, name):
    loaded = load_encoder(tiny_models[name])
    patch = 14 if name == "dinov2" else 16
    x = torch.randn(1, 3, 5 * patch, 4 * patch, generator=torch.Generator().manual_seed(0))
    full = _features(loaded, x)
    low = _features(loaded, x, dtype="bf16")
    assert low.dtype == torch.float32 and low.shape == full.shape
    assert (low - full).abs().max() <= REL_TOL * full.abs().max()
    assert F.cosine_similarity(low, full, dim=1).mean() >= COSINE_MIN
    assert torch.equal(low, _features(loaded, x, dtype="bf16"))  # reproducible: same inputs, same values
    # the memory plan follows the compute dtype: bf16 activations are half the fp32 ones
    ext32 = HRFeatureExtractor(loaded.model, loaded.family, transforms=4)
    ext16 = HRFeatureExtractor(loaded.model, loaded.family, transforms=4, dtype="bf16")
    assert ext16.plan(1, *x.shape[-2:], grad=False).per_item_bytes < ext32.plan(1, *x.shape[-2:],
                                                                                  grad=False).per_item_bytes


def test_hr_features_bf16_stride_reduction_and_layer_tap(tiny_models):
    loaded = load_encoder(tiny_models["dinov2"])
    x = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    for kw in ({"stride_reduction": True}, {"layer": 1}):
        full, low = _features(loaded, x, **kw), _features(loaded, x, dtype="bf16", **kw)
        assert low.dtype == torch.float32
        assert (low - full).abs().max() <= REL_TOL * full.abs().max(), kw


# ---- segmentation heads ----------------------------------------------------------------------
def test_seg_fp32_is_the_exact_path(trained_linear, shapes):
    """``dtype="fp32"`` is the code without autocast: equal to the model called by hand on an
    image already at the model's size (no resize, no padding)."""
    rgb = load_rgb(sorted(Path(shapes["root"]).glob("ds/val/images/*.jpg"))[0])
    assert rgb.shape[:2] == (64, 64)
    scores = predict_scores(trained_linear, rgb, dtype="fp32")
    assert torch.equal(scores, predict_scores(trained_linear, rgb))
    cfg = trained_linear.config
    with torch.no_grad():
        x = Normalize(cfg.mean, cfg.std)(rgb)[None]
        x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=False)
        ref = trained_linear.scores(trained_linear(x), (64, 64))
    assert torch.equal(scores, F.interpolate(ref, size=(64, 64), mode="bilinear", align_corners=False)[0])


def test_seg_bf16_agrees_with_fp32_on_a_trained_head(trained_linear, shapes):
    pairs = pair_paths(shapes["val_images"], shapes["val_masks"])
    flips = total = 0
    for image, _ in pairs:
        rgb = load_rgb(image)
        full = predict_scores(trained_linear, rgb)
        low = predict_scores(trained_linear, rgb, dtype="bf16")
        assert low.dtype == torch.float32
        err = (low - full).abs().max()
        assert err <= REL_TOL * full.abs().max()
        flipped = full.argmax(0) != low.argmax(0)
        top2 = full.topk(2, dim=0).values
        # a class can only flip where fp32's margin is within twice the score error
        assert bool(((top2[0] - top2[1])[flipped] <= 2 * err).all())
        flips, total = flips + int(flipped.sum()), total + flipped.numel()
    assert flips / total <= PIXEL_FLIP_TOL
    m32 = metrics_from_confusion(evaluate(trained_linear, pairs))
    m16 = metrics_from_confusion(evaluate(trained_linear, pairs, dtype="bf16"))
    assert abs(m32["mIoU"] - m16["mIoU"]) <= MIOU_TOL
    assert torch.equal(evaluate(trained_linear, pairs, dtype="bf16"), evaluate(trained_linear, pairs, dtype="bf16"))


@pytest.mark.parametrize("head,opts", [("upernet", ["head.channels=16"]), ("mask2former", M2F_TINY)])
def test_seg_bf16_pyramid_heads_return_fp32_scores(tiny_models, head, opts):
    torch.manual_seed(0)
    model = build_seg_model(SegModelConfig(head=head, encoder=str(tiny_models["dinov2"]), num_classes=5,
                                           image_size=64, head_overrides=opts)).eval()
    rgb = (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)
    for mode in ("resize", "slide"):
        full = predict_scores(model, rgb, mode=mode)
        low = predict_scores(model, rgb, mode=mode, dtype="bf16")
        assert low.dtype == torch.float32 and low.shape == full.shape == (5, 48, 80)
        assert (low - full).abs().max() <= REL_TOL * full.abs().max(), mode


def test_predict_images_bf16_same_bytes_twice(trained_linear, shapes, tmp_path):
    files = sorted(Path(shapes["root"]).glob("ds/val/images/*.jpg"))[:2]
    first = predict_images(trained_linear, files, tmp_path / "a", dtype="bf16")
    second = predict_images(trained_linear, files, tmp_path / "b", dtype="bf16")
    assert first["dtype"] == second["dtype"] == "bf16"
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    assert all(p.dtype == torch.float32 for p in trained_linear.parameters())  # the model is unchanged


@pytest.mark.slow
def test_bench_hr_features_dtype_rows(tmp_path):
    """``tools/bench_hr_features.py --dtype bf16``: fp32 and bf16 rows in one run, ratios and
    agreement on the bf16 rows, the dtype in every row."""
    import json

    import bench_hr_features

    out = tmp_path / "hr.json"
    assert bench_hr_features.main(["--models", "T", "--sizes", "56", "--ks", "1,4", "--dtype", "bf16", "--depth", "0",
                                   "--plain-batched-max-size", "0", "--stride-max-size", "14",
                                   "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["summary"]["dtypes"] == ["bf16", "fp32"]
    low = [r for r in data["rows"] if r["dtype"] == "bf16"]
    assert {r["variant"] for r in low} == {"bilinear", "tavg1", "tavg4", "tavg4_noprecast", "tavg4_model_cast"}
    for row in low:
        assert row["x_fp32"] > 0 and row["cosine_mean"] >= COSINE_MIN, row["variant"]
        if not row["variant"].endswith("_model_cast"):  # autocast; the all-bf16 model is measured, not bounded
            assert row["rel_max_diff"] <= REL_TOL, row["variant"]


# ---- through the command line (sam2-vitplug seg eval|predict, features --dtype) -----------------
def test_cli_seg_eval_and_predict_dtype(trained_linear, shapes, tmp_path, capsys):
    """`--dtype bf16` reaches the library (recorded in the JSON) and agrees with fp32; fp16 on a
    CPU and a contradicting deprecated `--amp` are one line each, exit 2, before anything is written."""
    import json

    from sam2_vitplug.cli import main

    ckpt = str(Path(shapes["root"]) / "ck_linear" / "last.pt")
    data = ["--image-paths", shapes["val_images"], "--mask-paths", shapes["val_masks"], "--device", "cpu",
            "--no-progress"]
    scores = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / f"eval_{dtype}.json"
        assert main(["seg", "eval", "--checkpoint", ckpt, *data, "--dtype", dtype, "--out", str(out)]) == 0
        scores[dtype] = json.loads(out.read_text())
        assert scores[dtype]["dtype"] == dtype
    assert abs(scores["bf16"]["mIoU"] - scores["fp32"]["mIoU"]) <= MIOU_TOL
    capsys.readouterr()
    for extra, message in ((["--dtype", "fp16"], "--dtype fp16 needs a CUDA or MPS device"),
                           (["--dtype", "bf16", "--amp", "off"], "--dtype bf16 and --amp off disagree")):
        bad = tmp_path / "bad.json"
        assert main(["seg", "eval", "--checkpoint", ckpt, *data, *extra, "--out", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"sam2-vitplug: error: {message}") and not bad.exists()
    assert main(["seg", "eval", "--checkpoint", ckpt, *data, "--amp", "off", "--out", str(tmp_path / "a.json")]) == 0
    assert "--amp is deprecated" in capsys.readouterr().err
    assert json.loads((tmp_path / "a.json").read_text())["dtype"] == "fp32"
    first = sorted(Path(shapes["root"]).glob("ds/val/images/*.jpg"))[0]
    assert main(["seg", "predict", "--checkpoint", ckpt, "--input", str(first), "--out", str(tmp_path / "pred"),
                 "--device", "cpu", "--no-progress", "--dtype", "bf16"]) == 0
    assert json.loads((tmp_path / "pred" / "predict.json").read_text())["dtype"] == "bf16"


def test_cli_features_dtype(tiny_models, shapes, tmp_path):
    """`features --dtype bf16`: fp32 file (the output dtype is --out-dtype's), the compute dtype
    in the metadata, and features within the stated cosine of the fp32 ones."""
    from safetensors import safe_open

    from sam2_vitplug.cli import main

    image = str(sorted(Path(shapes["root"]).glob("ds/val/images/*.jpg"))[0])
    feats = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / f"{dtype}.safetensors"
        assert main(["features", image, "--encoder", str(tiny_models["dinov2"]), "--transforms", "2", "--dtype", dtype,
                     "--device", "cpu", "--quiet", "--out", str(out)]) == 0
        with safe_open(str(out), "pt") as fh:
            feats[dtype] = fh.get_tensor("features")
            assert fh.metadata()["compute_dtype"] == dtype
        assert feats[dtype].dtype == torch.float32
    cosine = F.cosine_similarity(feats["fp32"], feats["bf16"], dim=0)
    assert float(cosine.mean()) >= COSINE_MIN and not torch.equal(feats["fp32"], feats["bf16"])
    assert main(["features", image, "--encoder", str(tiny_models["dinov2"]), "--dtype", "fp16", "--device", "cpu",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "x.safetensors").exists()
