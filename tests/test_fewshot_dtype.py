"""The few-shot path in reduced precision (``dtype=bf16``): fp32 is the exact code without
autocast, bf16 agrees with fp32 within stated tolerances, fp16 on a CPU fails in one line, the
bank records its dtype and a run in another dtype gets one warning line.

Tolerances (measured on these tiny random models, then given ~2x headroom): bf16 rounds every
matmul input to 8 significant bits (relative 2^-9 = 2e-3 per rounding), and a few layers
compound it to ~1e-2 relative in ViT features; cosine similarities of unit vectors move by less
than that. The engine test compares against float64 truth: the fast engine in bf16 must be no
further from it than 2x upstream's own decoder under autocast (the same criterion the fp32
engine test uses against upstream's fp32, tests/test_decoder_engine.py).
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAMILIES, tiny_overrides
from sam2.build_sam import build_sam2

from sam2_vitplug.matching import (
    FewShotPredictor,
    GroundTruthProposals,
    SAM2Proposals,
    bank_dtype_warning,
    build_bank,
    load_config,
    load_matcher,
    sam2_box_prompter,
    sample_references,
)
from sam2_vitplug.matching.decoder_engine import FastMaskDecoder
from sam2_vitplug.matching.evaluation import detection_agreement
from sam2_vitplug.matching.io import load_coco_json, load_rgb
from sam2_vitplug.precision import autocast, precast

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_synthetic_dataset import DatasetSpec, make_dataset  # noqa: E402

SIZE = 128


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("fewshot_dtype") / "shapes",
                        DatasetSpec(train=8, val=3, image_size=SIZE, seed=4, min_instances=2, max_instances=3))


@pytest.fixture(scope="module")
def sam2_tiny(tiny_models):
    torch.manual_seed(0)
    return build_sam2(FAMILIES["dinov2"][1], ckpt_path=None, device="cpu",
                      hydra_overrides_extra=tiny_overrides(tiny_models["dinov2"], SIZE, freeze_vit=True)).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def test_fp16_on_cpu_is_one_line_before_anything_is_loaded(sam2_tiny):
    for call in (lambda: load_matcher("/no/such/encoder", dtype="fp16"),
                 lambda: SAM2Proposals(sam2_tiny, dtype="fp16"),
                 lambda: load_matcher("/no/such/encoder", dtype="int4")):
        with pytest.raises(ValueError) as err:
            call()
        assert "\n" not in str(err.value) and "--dtype" in str(err.value)  # the dtype, not the missing path


def test_matcher_fp32_is_the_code_without_autocast_and_bf16_agrees(tiny_models):
    fp32 = load_matcher(tiny_models["dinov2"], input_size=112)
    bf16 = load_matcher(tiny_models["dinov2"], input_size=112, dtype="bf16")
    assert (fp32.compute_dtype, bf16.compute_dtype) == ("fp32", "bf16")
    pixels = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # encode() written out without any precision context
        tokens = fp32.vit(pixel_values=(pixels - fp32.mean) / fp32.std, **fp32._forward_kwargs).last_hidden_state
        plain = fp32.tokens_to_grid(tokens, 8, 8).float()
    assert torch.equal(fp32.encode(pixels), plain)
    low = bf16.encode(pixels)
    assert low.dtype == torch.float32 and 0 < _rel(low, plain) < 5e-2
    cos = torch.nn.functional.cosine_similarity(low.flatten(2), plain.flatten(2), dim=1)
    assert float(cos.min()) > 0.999


@pytest.mark.parametrize("name", ["dinov2", "dinov2_reg", "dinov3", "ijepa"])
def test_matcher_bf16_with_precast_weights_equals_plain_autocast(tiny_models, name):
    """The matcher's pre-cast (``lowp_weights``: Linear only) gives plain autocast's bytes for every
    family, DINOv3 included (it casts its pixels to the patch conv's weight dtype, which stays
    fp32); and the weights are fp32 again after the call."""
    patch = 16 if name == "dinov3" else 14
    matcher = load_matcher(tiny_models[name], input_size=4 * patch, dtype="bf16")
    pixels = torch.rand(2, 3, 4 * patch, 4 * patch, generator=torch.Generator().manual_seed(2))
    with precast(False):
        plain = matcher.encode(pixels)
    for _ in range(2):  # first call casts, second reuses the cached copies
        assert torch.equal(matcher.encode(pixels), plain)
    assert all(p.dtype == torch.float32 and isinstance(p, torch.nn.Parameter) for p in matcher.vit.parameters())


def test_matcher_hr_features_follow_its_dtype_and_average_in_fp32(tiny_models):
    """``encode_hr`` (scoring.hr_transforms) runs its ViT forwards in the matcher's dtype through
    the HR extractor itself, whose transform average stays fp32: the same bytes as an
    HRFeatureExtractor built with that dtype, fp32 out, and within bf16 rounding of fp32."""
    from sam2_vitplug.modeling.hr_features import HRFeatureExtractor

    fp32 = load_matcher(tiny_models["dinov2"], input_size=56)
    bf16 = load_matcher(tiny_models["dinov2"], input_size=56, dtype="bf16")
    assert bf16.hr_extractor(4).compute_dtype == "bf16" and fp32.hr_extractor(4).compute_dtype == "fp32"
    pixels = torch.rand(1, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    low = bf16.encode_hr(pixels, (16, 16), 4)
    with torch.inference_mode():
        direct = HRFeatureExtractor(bf16.vit, bf16.family, transforms=4, dtype="bf16")((pixels - bf16.mean) / bf16.std,
                                                                                      (16, 16))
    assert low.dtype == torch.float32 and torch.equal(low, direct)
    assert 0 < _rel(low, fp32.encode_hr(pixels, (16, 16), 4)) < 5e-2


def test_bank_records_dtype_and_the_run_warns_on_a_mismatch(tiny_models, shapes):
    train = load_coco_json(shapes / "train" / "annotations.json")
    refs, _ = sample_references(train, 1, 0, min_size=16)
    banks = {d: build_bank(load_matcher(tiny_models["dinov2"], input_size=112, dtype=d), refs,
                           shapes / "train" / "images", {}, progress=False) for d in ("fp32", "bf16")}
    assert banks["fp32"].meta["dtype"] == "fp32" and banks["bf16"].dtype == "bf16"
    assert bank_dtype_warning(banks["bf16"], "bf16") is None and banks["fp32"].dtype_warning("float32") is None
    line = bank_dtype_warning(banks["fp32"], "bf16")
    assert line.startswith("warning: the memory bank was built in fp32 and this run computes in bf16") \
        and "\n" not in line and "--dtype bf16" in line
    legacy = copy.copy(banks["fp32"])
    legacy.meta = {k: v for k, v in banks["fp32"].meta.items() if k != "dtype"}  # a bank from before the record
    assert legacy.dtype == "fp32" and legacy.dtype_warning("bf16") is not None
    # prototypes: unit vectors within 1e-2 (cosine > 0.9995) of the fp32 bank's
    cos = (banks["fp32"].prototypes * banks["bf16"].prototypes).sum(1)
    assert float(cos.min()) > 0.9995


def _null(*_args, **_kwargs):
    return contextlib.nullcontext()


def test_proposals_fp32_equal_the_code_without_precision_contexts(sam2_tiny, shapes, monkeypatch):
    """dtype=fp32 runs exactly today's code: the same proposals as with every precision context
    of the engine and the source replaced by a plain no-op."""
    image = load_rgb(shapes / "val" / "images" / "000001.jpg")
    with_contexts = SAM2Proposals(sam2_tiny, points_per_side=4, points_batch=8, iou_thr=0.0)(image, 0)
    import sam2_vitplug.matching.decoder_engine as engine_mod
    import sam2_vitplug.matching.proposals as proposals_mod

    for mod in (engine_mod, proposals_mod):
        for name in ("compute_in", "full_precision"):
            monkeypatch.setattr(mod, name, _null)
    without = SAM2Proposals(sam2_tiny, points_per_side=4, points_batch=8, iou_thr=0.0)(image, 0)
    assert torch.equal(with_contexts.logits, without.logits) and torch.equal(with_contexts.iou, without.iou)


def test_bf16_pipeline_agrees_with_fp32(tiny_models, sam2_tiny, shapes):
    """Same job in fp32 and bf16 (SAM2 proposals, matcher, bank): low-res logits agree in sign on
    >= 97% of pixels, IoU predictions within 0.05, and >= 80% of the fp32 detections have a bf16
    twin (same class, mask IoU >= 0.9) scoring within 0.05 on average."""
    train = load_coco_json(shapes / "train" / "annotations.json")
    val = load_coco_json(shapes / "val" / "annotations.json")
    refs, _ = sample_references(train, 1, 0, min_size=16)
    cfg = load_config({"output": {"top_k": 10}})
    runs, props = {}, {}
    for dtype in ("fp32", "bf16"):
        matcher = load_matcher(tiny_models["dinov2"], input_size=112, dtype=dtype)
        bank = build_bank(matcher, refs, shapes / "train" / "images", {}, progress=False)
        source = SAM2Proposals(sam2_tiny, points_per_side=4, points_batch=8, iou_thr=0.0, dtype=dtype)
        predictor = FewShotPredictor(bank, source, matcher, cfg)
        image = load_rgb(shapes / "val" / "images" / val["images"][0]["file_name"])
        props[dtype] = source(image, 0)
        runs[dtype] = [r for im in val["images"]
                       for r in predictor.predict(load_rgb(shapes / "val" / "images" / im["file_name"]), im["id"])]
    a, b = props["fp32"], props["bf16"]
    assert b.logits.dtype == torch.float32 and b.iou.dtype == torch.float32 and len(a) == len(b) == 16
    assert float(((a.logits > 0) == (b.logits > 0)).float().mean()) >= 0.97
    assert float((a.iou - b.iou).abs().max()) <= 0.05
    agree = detection_agreement(runs["fp32"], runs["bf16"])
    assert agree["reference_detections"] > 0
    assert agree["matched_fraction"] >= 0.8 and agree["mean_abs_score_diff"] <= 0.05, agree
    assert detection_agreement(runs["fp32"], runs["fp32"])["matched_fraction"] == 1.0


def test_ground_truth_scoring_in_bf16_keeps_the_ranking(tiny_models, shapes):
    """With fixed (annotated) proposals only the matcher is in bf16: scores within 2e-2 of fp32."""
    train = load_coco_json(shapes / "train" / "annotations.json")
    val = load_coco_json(shapes / "val" / "annotations.json")
    refs, _ = sample_references(train, 1, 0, min_size=16)
    cfg = load_config({"output": {"top_k": 20}})
    scores = {}
    for dtype in ("fp32", "bf16"):
        matcher = load_matcher(tiny_models["dinov2"], input_size=112, dtype=dtype)
        bank = build_bank(matcher, refs, shapes / "train" / "images", {}, progress=False)
        predictor = FewShotPredictor(bank, GroundTruthProposals(val), matcher, cfg)
        image = load_rgb(shapes / "val" / "images" / val["images"][0]["file_name"])
        proposals = predictor.source(image, val["images"][0]["id"])
        scores[dtype] = predictor.score(proposals, predictor.target_features(image, proposals))["scores"]
    assert scores["bf16"].dtype == torch.float32
    assert torch.allclose(scores["fp32"], scores["bf16"], atol=2e-2, rtol=0)


def test_box_prompter_bf16_masks_match_fp32(sam2_tiny, shapes):
    from sam2_vitplug.build import make_image_predictor

    image = load_rgb(shapes / "val" / "images" / "000001.jpg")
    boxes = np.array([[10, 10, 60, 70.0], [40, 30, 120, 100.0]], np.float32)
    a = sam2_box_prompter(make_image_predictor(sam2_tiny))(image, boxes)
    b = sam2_box_prompter(make_image_predictor(sam2_tiny), dtype="bf16")(image, boxes)
    assert a.shape == b.shape and float((a == b).mean()) >= 0.97


# ---- the decoder engine in bf16 against upstream's decoder in bf16 ------------------------------

def _randomised_hiera_t():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_decoder_engine import HIERA_T, _randomise

    torch.manual_seed(0)
    return _randomise(build_sam2(HIERA_T, ckpt_path=None, device="cpu",
                                 hydra_overrides_extra=["++model.image_size=256"]), 0)


@pytest.mark.parametrize("multimask", [True, False])
def test_fast_engine_bf16_is_as_close_to_float64_as_upstream_bf16(multimask):
    """Random weights with randomised norms and biases (every parameter matters). Upstream's
    decoder under autocast (prompt encoding in fp32, as the engine does it) is itself up to ~8e-2
    of the largest logit away from float64 here; the engine in bf16 must be no further than 2x
    that, its masks must agree in sign with float64 as often as upstream's (within 1 point), and
    its outputs are fp32."""
    model = _randomised_hiera_t()
    gen = torch.Generator().manual_seed(1)
    h, w = model.sam_prompt_encoder.image_embedding_size
    emb = torch.randn(1, 256, h, w, generator=gen)
    high_res = [torch.randn(1, 32, 4 * h, 4 * w, generator=gen), torch.randn(1, 64, 2 * h, 2 * w, generator=gen)]
    coords = torch.rand(12, 2, 2, generator=gen) * model.image_size
    labels = torch.ones(12, 2, dtype=torch.int)
    penc, dec = model.sam_prompt_encoder, model.sam_mask_decoder
    with torch.inference_mode():
        sparse, dense = penc(points=(coords, labels), boxes=None, masks=None)
        pe = penc.get_dense_pe()
        dec64 = copy.deepcopy(dec).double()
        exact = dec64(image_embeddings=emb.double(), image_pe=pe.double(), sparse_prompt_embeddings=sparse.double(),
                      dense_prompt_embeddings=dense.double(), multimask_output=multimask, repeat_image=True,
                      high_res_features=[f.double() for f in high_res])
        with autocast("bf16", "cpu"):
            up = dec(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
                     dense_prompt_embeddings=dense, multimask_output=multimask, repeat_image=True,
                     high_res_features=high_res)
    engine = FastMaskDecoder(model, sub_batch=5, upscale_tokens=40, dtype="bf16")
    out = engine.predict_points(engine.prepare(emb, high_res), coords, labels, multimask_output=multimask)
    assert out.masks.dtype == out.iou.dtype == torch.float32
    for ours, theirs, truth in ((out.masks, up[0], exact[0]), (out.iou, up[1], exact[1])):
        scale = max(1.0, float(truth.abs().max()))
        err_ours = float((ours.double() - truth).abs().max()) / scale
        err_up = float((theirs.double() - truth).abs().max()) / scale
        assert 0 < err_up < 0.2 and err_ours <= 2 * err_up + 1e-3, (err_ours, err_up)
    sign = lambda t: float(((t > 0) == (exact[0] > 0)).float().mean())  # noqa: E731
    assert sign(out.masks) >= sign(up[0]) - 0.01
