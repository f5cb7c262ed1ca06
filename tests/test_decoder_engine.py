"""The exact fast decoder engine against upstream SAM2's prompt encoder + mask decoder.

Random weights (layer norms and biases randomised too, so every parameter matters), several
configs: upstream sam2.1 hiera-t (high-res features, object-score MLP, stability fallback),
the same without high-res features / object scores / stability fallback, and our
``sam2_vit_dino_s`` with a tiny ViT trunk. Small image sizes keep it fast; the decoder's code
path does not depend on the size.

Tolerance, two parts. (1) In float64 (decoder weights and inputs cast to double), every output
(mask logits, IoU predictions, object logits) equals upstream's within 1e-9 of its largest
magnitude: the reordering is exact algebra, and a real error (a wrong bias, a dropped positional
encoding, a mis-ordered pixel) is O(1). (2) In float32 both executions round differently; with
randomised norms and biases upstream's own float32 result is up to ~3e-4 (relative to the
largest logit) away from the float64 one, so the engine must be no further from float64 than
2x upstream's float32 error + 1e-5, and within 1e-3 of upstream's float32 output. With real
(unrandomised) weights the float32 difference is ~1e-6 relative (tools/bench_proposals.py).
"""

from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from sam2.build_sam import build_sam2

from sam2_vitplug.matching import load_config
from sam2_vitplug.matching.decoder_engine import FastMaskDecoder
from sam2_vitplug.matching.proposals import SAM2Proposals, adaptive_from_config

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-3  # float32: of the largest upstream magnitude of each output (see the module docstring)
RTOL64 = 1e-9  # float64: the reordering is exact

HIERA_T = "configs/sam2.1/sam2.1_hiera_t.yaml"
PLAIN = ["++model.use_high_res_features_in_sam=false", "++model.pred_obj_scores=false",
         "++model.pred_obj_scores_mlp=false", "++model.fixed_no_obj_ptr=false"]


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random norms / biases / embeddings in the decoder and prompt encoder (defaults are 1 / 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (model.sam_mask_decoder, model.sam_prompt_encoder):
            for name, p in module.named_parameters():
                if name.endswith("bias") or "embed" in name or "token" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
                elif "norm" in name or "ln" in name or p.dim() == 1:
                    p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def models(tiny_models) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    out = {
        "hiera_t": build_sam2(HIERA_T, ckpt_path=None, device="cpu", hydra_overrides_extra=["++model.image_size=256"]),
        "hiera_t_plain": build_sam2(HIERA_T, ckpt_path=None, device="cpu", apply_postprocessing=False,
                                    hydra_overrides_extra=["++model.image_size=256", *PLAIN]),
        "vit_dino_s": build_sam2("sam2_vit_dino_s.yaml", ckpt_path=None, device="cpu",
                                 hydra_overrides_extra=tiny_overrides(tiny_models["dinov2"], 128)),
    }
    return {k: _randomise(m, i) for i, (k, m) in enumerate(out.items())}


def _inputs(model, seed: int, batch: int = 7, points: int = 2):
    gen = torch.Generator().manual_seed(seed)
    h, w = model.sam_prompt_encoder.image_embedding_size
    emb = torch.randn(1, 256, h, w, generator=gen)
    high_res = [torch.randn(1, 32, 4 * h, 4 * w, generator=gen), torch.randn(1, 64, 2 * h, 2 * w, generator=gen)] \
        if model.sam_mask_decoder.use_high_res_features else None
    coords = torch.rand(batch, points, 2, generator=gen) * model.image_size
    labels = torch.randint(0, 2, (batch, points), generator=gen, dtype=torch.int)
    labels[:, 0] = 1
    return emb, high_res, coords, labels


@torch.inference_mode()
def _upstream(model, emb, high_res, coords, labels, multimask):
    penc = model.sam_prompt_encoder
    sparse, dense = penc(points=(coords, labels), boxes=None, masks=None)
    masks, iou, _, obj = model.sam_mask_decoder(
        image_embeddings=emb, image_pe=penc.get_dense_pe(), sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask, repeat_image=True, high_res_features=high_res)
    return masks, iou, obj


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, atol=rtol * scale, rtol=0)


def _double(model):
    """A float64 copy of the mask decoder next to the model's float32 prompt encoder (upstream
    casts point coordinates to float32, so the prompt encoder stays float32)."""
    return types.SimpleNamespace(sam_prompt_encoder=model.sam_prompt_encoder,
                                 sam_mask_decoder=copy.deepcopy(model.sam_mask_decoder).double())


@torch.inference_mode()
def _upstream64(model64, emb, high_res, coords, labels, multimask):
    penc = model64.sam_prompt_encoder
    sparse, dense = penc(points=(coords, labels), boxes=None, masks=None)
    masks, iou, _, obj = model64.sam_mask_decoder(
        image_embeddings=emb.double(), image_pe=penc.get_dense_pe().double(), sparse_prompt_embeddings=sparse.double(),
        dense_prompt_embeddings=dense.double(), multimask_output=multimask, repeat_image=True,
        high_res_features=None if high_res is None else [f.double() for f in high_res])
    return masks, iou, obj


@pytest.mark.parametrize("name", ["hiera_t", "hiera_t_plain", "vit_dino_s"])
@pytest.mark.parametrize("multimask", [True, False])
def test_fast_engine_equals_upstream_decoder(models, name, multimask):
    model = models[name]
    emb, high_res, coords, labels = _inputs(model, seed=1)
    # (1) float64: exact reordering; uneven sub-batches (7 = 3 + 3 + 1), upscale chunks that
    # split token rows unevenly
    model64 = _double(model)
    ref = _upstream64(model64, emb, high_res, coords, labels, multimask)
    engine64 = FastMaskDecoder(model64, sub_batch=3, upscale_tokens=40)
    hr64 = None if high_res is None else [f.double() for f in high_res]
    out64 = engine64.predict_points(engine64.prepare(emb.double(), hr64), coords, labels, multimask_output=multimask)
    assert out64.masks.shape == ref[0].shape and out64.iou.shape == ref[1].shape
    for actual, expected in zip((out64.masks, out64.iou, out64.object_score_logits), ref):
        _close(actual, expected, RTOL64)
    assert ref[0].abs().max() > 1.0  # the comparison is not between near-zero tensors
    # (2) float32: no further from float64 than upstream's own float32 result (2x + 1e-5)
    up = _upstream(model, emb, high_res, coords, labels, multimask)
    engine = FastMaskDecoder(model, sub_batch=3, upscale_tokens=40)
    out = engine.predict_points(engine.prepare(emb, high_res), coords, labels, multimask_output=multimask)
    for actual, upstream, exact in zip((out.masks, out.iou, out.object_score_logits), up, ref):
        scale = max(1.0, float(exact.abs().max()))
        assert (actual.double() - exact).abs().max() <= 2 * (upstream.double() - exact).abs().max() + 1e-5 * scale
        _close(actual, upstream)


def test_features_reach_the_output(models):
    """A wrong high-res layout or a dropped positional encoding must change the result."""
    model = models["hiera_t"]
    emb, high_res, coords, labels = _inputs(model, seed=2, batch=2)
    engine = FastMaskDecoder(model)
    base = engine.predict_points(engine.prepare(emb, high_res), coords, labels).masks
    flipped = [f.flip(-1) for f in high_res]
    other = engine.predict_points(engine.prepare(emb, flipped), coords, labels).masks
    up_flipped, _, _ = _upstream(model, emb, flipped, coords, labels, True)
    assert (base - other).abs().max() > 0.1
    _close(other, up_flipped)


@pytest.mark.parametrize("name,multimask", [("hiera_t", True), ("hiera_t", False), ("hiera_t_plain", False)])
def test_best_masks_equal_decode_then_select(models, name, multimask):
    """``best_masks`` (upscaling only kept prompts' chosen token) = full decode + argmax + threshold."""
    model = models[name]
    emb, high_res, coords, labels = _inputs(model, seed=3, batch=9, points=1)
    engine = FastMaskDecoder(model, sub_batch=4)
    ctx = engine.prepare(emb, high_res)
    full = engine.predict_points(ctx, coords, labels, multimask_output=multimask)
    best_iou, best = full.iou.max(1)
    thr = float(best_iou.median())
    keep = torch.nonzero(best_iou >= thr).flatten()
    assert 0 < len(keep) < len(best_iou)  # the threshold really drops prompts
    logits, iou, index = engine.best_masks(ctx, coords, labels, multimask_output=multimask, iou_thr=thr)
    assert torch.equal(index, keep)
    _close(iou, best_iou[keep])
    _close(logits, full.masks[keep, best[keep]])
    none = engine.best_masks(ctx, coords, labels, multimask_output=multimask, iou_thr=10.0)
    assert none[0].shape == (0, *full.masks.shape[-2:]) and len(none[2]) == 0
    # iou_strict (the ntt preset's "> thr"): the median prompt itself sits at thr and is dropped
    strict = engine.best_masks(ctx, coords, labels, multimask_output=multimask, iou_thr=thr, iou_strict=True)
    assert torch.equal(strict[2], torch.nonzero(best_iou > thr).flatten()) and len(strict[2]) < len(keep)


def test_sam2_proposals_fast_equals_upstream_engine(models):
    """The whole proposal stage on an image: same kept proposals, same masks and boxes."""
    model = models["hiera_t"]
    image = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    out = {}
    for engine in ("upstream", "fast"):
        source = SAM2Proposals(model, points_per_side=4, points_batch=5, iou_thr=0.0, engine=engine)
        out[engine] = source(image, 1)
        assert source.stats == {"decoded_prompts": 16.0, "kept": 16.0}
    up, fast = out["upstream"], out["fast"]
    _close(fast.iou, up.iou)
    _close(fast.lowres, up.lowres)
    # full-resolution masks: only pixels whose logit is within float noise of 0 may differ
    differ = (fast.render(torch.arange(16)) != up.render(torch.arange(16))).float().mean()
    assert differ < 1e-3


def test_engine_rejects_bad_inputs(models):
    model = models["hiera_t"]
    emb, high_res, coords, labels = _inputs(model, seed=4)
    engine = FastMaskDecoder(model)
    with pytest.raises(ValueError, match="one image"):
        engine.prepare(emb.repeat(2, 1, 1, 1), high_res)
    with pytest.raises(ValueError, match="prompt encoder expects"):
        engine.prepare(emb[..., :8], high_res)
    with pytest.raises(ValueError, match="high-res features"):
        engine.prepare(emb, None)
    with pytest.raises(ValueError, match="high-res features must be"):
        engine.prepare(emb, [high_res[1], high_res[0]])
    ctx = engine.prepare(emb, high_res)
    with pytest.raises(ValueError, match="coords must be"):
        engine.predict_points(ctx, coords[0], labels[0])
    with pytest.raises(ValueError, match="sparse prompt embeddings"):
        engine.forward(ctx, torch.zeros(2, 3, 17), True)
    with pytest.raises(ValueError, match="sub_batch"):
        FastMaskDecoder(model, sub_batch=0)
    with pytest.raises(ValueError, match="unknown proposal engine 'turbo'"):
        SAM2Proposals(model, engine="turbo")
    with pytest.raises(ValueError, match="proposals.engine='turbo'"):
        adaptive_from_config(load_config(["proposals.engine=turbo"]).proposals)


def test_default_sub_batch_follows_image_size(models):
    """4 prompts' (N, C) tokens at 1024 px (64x64 tokens), proportionally more at smaller sizes."""
    assert FastMaskDecoder(models["hiera_t"]).sub_batch == 16 * 2**20 // (16 * 16 * 256 * 4)
    big = build_sam2(HIERA_T, ckpt_path=None, device="cpu")
    assert FastMaskDecoder(big).sub_batch == 4


@pytest.mark.slow
def test_bench_proposals_quick(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    import bench_proposals

    out = tmp_path / "proposals.json"
    assert bench_proposals.main(["--quick", "--threads", "1", "--out", str(out)]) == 0  # 8x8 points
    report = json.loads(out.read_text())
    model = report["models"]["t"]
    assert set(model["modes"]) == {"fast", "upstream", "adaptive"}
    assert model["modes"]["upstream"]["decoded_prompts"] == 64
    assert model["modes"]["adaptive"]["decoded_prompts"] <= 64
    assert model["parity"]["masks_max_rel"] < RTOL
    assert model["flops"]["fast"] < model["flops"]["upstream"]
    assert "x upstream" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_fewshot_compares_engines(tiny_models, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    import bench_fewshot

    tiny = tiny_models["dinov2"]
    args = ["--device", "cpu", "--sam2-config", HIERA_T, "--sam2-override", "++model.image_size=256",
            "--shared-config", "", "--encoders", str(tiny), "--target-hw", "96x128", "--points-per-side", "4",
            "--engines", "fast,upstream", "--adaptive", "--adaptive-start", "2", "--images", "1", "--warmup", "0", "--classes", "3",
            "--threads", "1", "--out", str(tmp_path / "bench.json")]
    assert bench_fewshot.main(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    stem = f"sam2.1_hiera_t+{tiny}"
    assert set(report["settings"]) == {f"{stem}:fast", f"{stem}:upstream", f"{stem}:fast+adaptive"}
    assert report["settings"][f"{stem}:upstream"]["decoded_prompts"] == 16
    assert report["settings"][f"{stem}:fast+adaptive"]["decoded_prompts"] <= 16
    assert stem in report["engine_speedup"]
    assert "faster per image than upstream's" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--engines"):
        bench_fewshot.main([*args[:-2], "--engines", "turbo", "--out", str(tmp_path / "x.json")])
