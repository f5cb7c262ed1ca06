"""Few-shot matching with real models: transformers matcher encoders (prefix tokens), SAM2
point-grid proposals with a tiny random SAM2, the shared-backbone mode, and torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAMILIES, tiny_overrides
from fewshot_plugin.install import installed
from sam2.build_sam import build_sam2

from sam2_vitplug.matching import (
    FewShotPredictor,
    SAM2Proposals,
    build_bank,
    load_config,
    load_matcher,
    sam2_box_prompter,
    sample_references,
)
from sam2_vitplug.build import make_image_predictor
from sam2_vitplug.matching.io import load_coco_json, load_rgb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_synthetic_dataset import DatasetSpec, make_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAM2_SIZE = 128  # tiny SAM2 image size; the synthetic images are 128 px too (no resize anywhere)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("fewshot_sam2") / "shapes",
                        DatasetSpec(train=8, val=3, image_size=SAM2_SIZE, seed=4, min_instances=2, max_instances=3))


@pytest.mark.parametrize("name,prefix,grid", [("dinov2", 1, 37), ("dinov2_reg", 5, 37), ("dinov3", 5, 32),
                                              ("ijepa", 0, 37)])
def test_hf_matcher_strips_prefix_tokens(tiny_models, name, prefix, grid):
    matcher = load_matcher(tiny_models[name])
    assert matcher.num_prefix_tokens == prefix and matcher.input_size == grid * matcher.patch_size
    pixels = torch.rand(2, 3, matcher.input_size, matcher.input_size)
    feats = matcher.encode(pixels)
    assert feats.shape == (2, 32, grid, grid)
    x = (pixels - matcher.mean) / matcher.std
    tokens = matcher.vit(pixel_values=x, **matcher._forward_kwargs).last_hidden_state
    assert tokens.shape[1] == prefix + grid * grid
    torch.testing.assert_close(feats[1, :, 2, 3], tokens[1, prefix + 2 * grid + 3])  # row-major patch order
    with pytest.raises(ValueError, match="multiple of the patch size"):
        load_matcher(tiny_models[name], input_size=matcher.input_size + 1)


def _sam2(tiny_models, name):
    torch.manual_seed(0)
    return build_sam2(FAMILIES[name][1], ckpt_path=None, device="cpu",
                      hydra_overrides_extra=tiny_overrides(tiny_models[name], SAM2_SIZE, freeze_vit=True))


def test_sam2_proposals_give_valid_coco_results(tiny_models, shapes):
    from pycocotools.coco import COCO

    train = load_coco_json(shapes / "train" / "annotations.json")
    val = load_coco_json(shapes / "val" / "annotations.json")
    refs, _ = sample_references(train, 1, 0, min_size=16)
    matcher = load_matcher(tiny_models["dinov2"], input_size=112)  # 8x8 patches: fast
    bank = build_bank(matcher, refs, shapes / "train" / "images", {}, progress=False)
    model = _sam2(tiny_models, "dinov2")
    source = SAM2Proposals(model, points_per_side=4, points_batch=8, iou_thr=0.0)
    predictor = FewShotPredictor(bank, source, matcher, load_config({"output": {"top_k": 5}}))
    image = load_rgb(shapes / "val" / "images" / val["images"][0]["file_name"])
    proposals = source(image, 1)
    assert proposals.lowres.shape[1:] == (SAM2_SIZE // 4, SAM2_SIZE // 4) and len(proposals) == 16
    assert set(predictor.timings) == set() and {"sam2_encoder", "prompt_decoding"} <= set(source.timings)
    results = [r for im in val["images"]
               for r in predictor.predict(load_rgb(shapes / "val" / "images" / im["file_name"]), im["id"])]
    assert 0 < len(results) <= 5 * len(val["images"])
    gt = COCO()
    gt.dataset = val
    gt.createIndex()
    dt = gt.loadRes(results)  # pycocotools accepts it: RLE, xywh boxes, scores, known categories
    assert len(dt.getAnnIds()) == len(results)
    # box-only references: upstream SAM2ImagePredictor box prompts give one full-size mask per box
    masks = sam2_box_prompter(make_image_predictor(model))(image, np.array([[10, 10, 60, 70.0]], np.float32))
    assert masks.shape == (1, *image.shape[:2]) and masks.dtype == bool
    for r in results:
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and x + w <= SAM2_SIZE and y + h <= SAM2_SIZE and 0 <= r["score"] <= 1


def test_shared_backbone_scores_equal_two_pass(tiny_models, shapes):
    """DINOv3 (patch 16) at SAM2 size 128 on 128 px images: SAM2 feeds its ViT exactly the
    matcher's input, so one ViT pass must give the same labels and scores as two."""
    train = load_coco_json(shapes / "train" / "annotations.json")
    matcher = load_matcher(tiny_models["dinov3"], input_size=SAM2_SIZE)
    refs, _ = sample_references(train, 1, 0, min_size=16)
    bank = build_bank(matcher, refs, shapes / "train" / "images", {}, progress=False)
    model = _sam2(tiny_models, "dinov3")
    cfg = load_config({"output": {"top_k": 20}})
    shared = SAM2Proposals(model, points_per_side=4, iou_thr=0.0, shared_backbone=True)
    shared.check_same_weights(matcher)
    two_pass = SAM2Proposals(model, points_per_side=4, iou_thr=0.0)
    image = load_rgb(shapes / "val" / "images" / "000001.jpg")
    outs = []
    for source in (shared, two_pass):
        predictor = FewShotPredictor(bank, source, matcher, cfg)
        proposals = source(image, 1)
        assert (proposals.features is not None) == (source is shared)
        features = predictor.target_features(image, proposals)
        outs.append((features, predictor.score(proposals, features)))
    (f1, s1), (f2, s2) = outs
    torch.testing.assert_close(f1, f2, atol=1e-5, rtol=1e-5)  # same ViT, same input; fp32 op-order noise
    assert torch.equal(s1["keep"], s2["keep"]) and torch.equal(s1["labels"], s2["labels"])
    torch.testing.assert_close(s1["scores"], s2["scores"], atol=1e-5, rtol=1e-5)
    other = load_matcher(tiny_models["dinov2"])
    with pytest.raises(ValueError, match="differ in"):
        shared.check_same_weights(other)


def test_torchrun_two_processes_split_and_merge(tmp_path, shapes):
    """2 gloo processes over 3 images (not divisible): merged output equals one process's."""
    from sam2_vitplug.cli import main

    with installed(tmp_path / "dist") as paths:
        train, val = shapes / "train", shapes / "val"
        bank = tmp_path / "bank.safetensors"
        assert main(["fewshot", "memory", "--refs", str(train / "annotations.json"), "--images", str(train / "images"),
                     "--shots", "2", "--encoder", "colorhist_8", "--out", str(bank), "--set", "memory.min_size=16",
                     "--device", "cpu"]) == 0
        run = ["run", "--bank", str(bank), "--images", str(val / "images"), "--ann", str(val / "annotations.json"),
               "--proposals", "ground_truth", "--quiet", "--device", "cpu"]
        assert main(["fewshot", *run, "--out", str(tmp_path / "one.json")]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    multi = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "sam2_vitplug.cli", "fewshot",
                            *run, "--out", str(tmp_path / "multi.json")], env=env, capture_output=True, text=True,
                           timeout=180)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert (tmp_path / "multi.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    results = json.loads((tmp_path / "one.json").read_text())
    assert {r["image_id"] for r in results} == {1, 2, 3}
    assert not list(tmp_path.glob("*.shard-*.jsonl"))


def test_random_init_matcher_is_reproducible(tiny_models):
    """`memory --random-init` and a later `run` must get the same random weights (bank check)."""
    a, b = (load_matcher(tiny_models["dinov3"], random_init=True) for _ in range(2))
    assert a.identity == b.identity and a.identity.endswith("#random")
    assert all(torch.equal(x, y) for x, y in zip(a.vit.state_dict().values(), b.vit.state_dict().values()))
    trained = load_matcher(tiny_models["dinov3"])
    assert not all(torch.equal(x, y) for x, y in zip(trained.vit.state_dict().values(), a.vit.state_dict().values()))


def test_shared_backbone_refuses_a_transform_avg_trunk(tiny_models):
    """With transform_avg the trunk's ViT sees K transformed copies, so its tokens are not the image's."""
    model = build_sam2("sam2_vit_dinov3_s.yaml", ckpt_path=None, device="cpu",
                       hydra_overrides_extra=tiny_overrides(tiny_models["dinov3"], image_size=SAM2_SIZE,
                                                            upsample_mode="transform_avg"))
    with pytest.raises(ValueError, match="transform_avg"):
        SAM2Proposals(model, points_per_side=4, shared_backbone=True)
    SAM2Proposals(model, points_per_side=4)  # without sharing it is a valid proposal source
