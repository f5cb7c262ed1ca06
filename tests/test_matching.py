"""Few-shot matching: scoring against plain loops, bank, sampler, end to end with a
colour-histogram encoder (published through the entry-point group) and ground-truth proposals,
resume, and bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fewshot_plugin.install import installed
from PIL import Image

from sam2_vitplug.matching import (
    FewShotPredictor,
    GroundTruthProposals,
    Proposals,
    build_bank,
    class_nms,
    class_similarity,
    evaluate,
    load_bank,
    load_config,
    load_matcher,
    sample_references,
    save_bank,
    soft_merge,
)
from sam2_vitplug.matching.io import load_coco_json, load_rgb
from sam2_vitplug.matching.runner import images_from_coco, run_images

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_synthetic_dataset import DatasetSpec, make_dataset  # noqa: E402

SPEC = DatasetSpec(train=12, val=6, image_size=256, seed=3)


@pytest.fixture(scope="module")
def colorhist(tmp_path_factory):
    """The test-only ``colorhist`` encoder family, installed for this module."""
    with installed(tmp_path_factory.mktemp("colorhist_dist")) as paths:
        yield paths


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("fewshot") / "shapes", SPEC)


@pytest.fixture(scope="module")
def bank(colorhist, shapes):
    train = load_coco_json(shapes / "train" / "annotations.json")
    refs, _ = sample_references(train, 5, 0)
    names = {c["id"]: c["name"] for c in train["categories"]}
    return build_bank(load_matcher("colorhist_8"), refs, shapes / "train" / "images", names, progress=False)


def _gt_run(bank, shapes, matcher=None):
    val = load_coco_json(shapes / "val" / "annotations.json")
    cfg = load_config({"proposals": {"source": "ground_truth"}})
    predictor = FewShotPredictor(bank, GroundTruthProposals(val), matcher or load_matcher("colorhist_8"), cfg)
    results = [r for im in val["images"]
               for r in predictor.predict(load_rgb(shapes / "val" / "images" / im["file_name"]), im["id"])]
    return val, results


# ---- scoring, NMS and soft merging against plain loops ---------------------------------------
def _loop_nms(boxes, scores, labels, thr):
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    keep = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if all(labels[j] != labels[i] or iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def _loop_soft_merge(masks, scores, labels, emb, thr):
    n = len(scores)
    out = []
    for i in range(n):
        mi = masks[i] > thr
        worst = 0.0
        for j in range(n):
            better = scores[j] > scores[i] or (scores[j] == scores[i] and j < i)
            if j == i or not better or labels[j] != labels[i]:
                continue
            overlap = float((mi & (masks[j] > thr)).sum()) / max(float(mi.sum()), 1.0)
            cos = float(np.dot(emb[i], emb[j]) / (np.linalg.norm(emb[i]) * np.linalg.norm(emb[j])))
            worst = max(worst, overlap * max(cos, 0.0))
        out.append(scores[i] * (1.0 - worst))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scoring_nms_and_merging_equal_plain_loops(seed):
    gen = torch.Generator().manual_seed(seed)
    n, k, c = 40, 5, 16
    emb, protos = torch.randn(n, c, generator=gen), torch.randn(k, c, generator=gen)
    sim = class_similarity(emb, protos)
    for i in range(n):
        for j in range(k):
            cos = float(emb[i] @ protos[j] / (emb[i].norm() * protos[j].norm()))
            assert sim[i, j].item() == pytest.approx(max(cos, 0.0), abs=1e-6)  # fp32 dot products
    xy = torch.rand(n, 2, generator=gen) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=gen) * 30], 1)
    scores = torch.rand(n, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    assert class_nms(boxes, scores, labels, 0.5).tolist() == _loop_nms(boxes.tolist(), scores.tolist(), labels.tolist(), 0.5)
    masks = (torch.rand(n, 12, 12, generator=gen) > 0.5).float() * torch.rand(n, 1, 1, generator=gen)
    scores[::7] = scores[1]  # ties exercise the index rule
    merged = soft_merge(masks, scores, labels, emb, 0.3)
    ref = _loop_soft_merge(masks.numpy(), scores.numpy(), labels.numpy(), emb.numpy(), 0.3)
    np.testing.assert_allclose(merged.numpy(), ref, atol=1e-6)  # fp32 vs fp64 accumulation
    assert (merged <= scores + 1e-7).all() and (merged < scores - 1e-3).any()


def test_soft_merge_suppresses_a_nested_duplicate_only():
    big = torch.zeros(3, 8, 8)
    big[0, 1:7, 1:7] = 1  # the best mask
    big[1, 2:5, 2:5] = 1  # inside it, same class, same embedding -> suppressed
    big[2, 2:5, 2:5] = 1  # inside it too but another class -> untouched
    emb = torch.ones(3, 4)
    out = soft_merge(big, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 1]), emb)
    assert out.tolist() == pytest.approx([0.9, 0.0, 0.7])


# ---- end to end: bank, labels, COCO encoding, evaluation -------------------------------------
def test_ground_truth_proposals_reach_high_ap_and_shuffled_prototypes_collapse(bank, shapes):
    val, results = _gt_run(bank, shapes)
    stats = evaluate(val, results, bank.class_ids)
    assert stats["segm"]["AP"] >= 0.9 and stats["bbox"]["AP"] >= 0.9
    _, shuffled = _gt_run(bank.shuffled(), shapes)
    collapsed = evaluate(val, shuffled, bank.class_ids)
    assert collapsed["segm"]["AP"] <= 0.1, collapsed["segm"]  # every class gets another's prototype
    for r in results:  # COCO result format
        assert set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"}
        assert r["segmentation"]["size"] == [256, 256] and isinstance(r["segmentation"]["counts"], str)


def test_bank_roundtrip_and_encoder_mismatch(bank, tmp_path):
    path = tmp_path / "bank.safetensors"
    save_bank(bank, path)
    loaded = load_bank(path, load_matcher("colorhist_8"))
    assert torch.equal(loaded.prototypes, bank.prototypes) and loaded.class_ids == bank.class_ids
    assert loaded.meta["encoder"] == "colorhist_8" and loaded.meta["input_size"] == 256
    assert loaded.class_names == ["circle", "square", "triangle", "star"]
    torch.testing.assert_close(loaded.prototypes.norm(dim=1), torch.ones(4))
    # vectors only: classes x shots x dim (+ prototypes), nothing like a token map
    assert loaded.instances.shape == (20, 64)
    with pytest.raises(ValueError, match="built with encoder 'colorhist_8'.*uses 'colorhist_coarse'"):
        load_bank(path, load_matcher("colorhist_coarse"))
    with pytest.raises(FileNotFoundError, match="fewshot memory"):
        load_bank(tmp_path / "nope.safetensors")


# ---- references ------------------------------------------------------------------------------
def _coco(anns, size=200):
    images = [{"id": i, "file_name": f"{i}.png", "width": size, "height": size} for i in (1, 2)]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    full = [{"id": i + 1, "image_id": a.get("image_id", 1), "category_id": a.get("cat", 1),
             "bbox": a["bbox"], "iscrowd": a.get("crowd", 0), "area": 100,
             "segmentation": a.get("seg", [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + 10, a["bbox"][1],
                                            a["bbox"][0] + 10, a["bbox"][1] + 10]])}
            for i, a in enumerate(anns)]
    return {"images": images, "annotations": full, "categories": cats}


def test_sampler_skips_and_reports_and_is_seeded():
    coco = _coco([
        {"bbox": [10, 10, 50, 50]}, {"bbox": [80, 80, 50, 50]}, {"bbox": [20, 100, 40, 40]},  # 3 usable, image 1
        {"bbox": [10, 10, 50, 50], "crowd": 1}, {"bbox": [10, 10, 20, 50]},  # crowd, tiny
        {"bbox": [0, 10, 50, 50]}, {"bbox": [150, 10, 50, 50]},  # border (left, right edge)
        {"bbox": [30, 30, 60, 60], "cat": 2, "image_id": 2, "seg": []},  # box-only
    ])
    refs, report = sample_references(coco, 2, seed=5, sampler="vitplug")
    assert report.skipped == {"crowd": 1, "tiny": 1, "border": 2}
    assert report.used == {1: 2, 2: 1} and report.available == {1: 3, 2: 1} and report.box_only == 1
    assert all(r.image_id == 1 for r in refs if r.category_id == 1)  # several instances of one image
    assert [r.segmentation for r in refs if r.category_id == 2] == [None]
    again, _ = sample_references(coco, 2, seed=5, sampler="vitplug")
    assert again == refs
    draws = {tuple(r.ann_id for r in sample_references(coco, 2, seed=s, sampler="vitplug")[0]) for s in range(10)}
    assert len(draws) > 1  # the seed matters


def test_class_without_usable_references_is_named():
    coco = _coco([{"bbox": [10, 10, 50, 50]}, {"bbox": [0, 0, 50, 50], "cat": 2}])
    with pytest.raises(ValueError, match=r"class\(es\) 'b' \(id 2\).*border"):
        sample_references(coco, 1, 0)


def test_box_only_references_use_sam2_box_prompts(colorhist, tmp_path):
    coco = _coco([{"bbox": [40, 40, 60, 60], "seg": []}, {"bbox": [50, 50, 80, 80], "cat": 2}])
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(tmp_path / "1.png")
    refs, _ = sample_references(coco, 1, 0)
    matcher = load_matcher("colorhist_8")
    with pytest.raises(ValueError, match="annotation 1 .*no segmentation.*--sam2-config"):
        build_bank(matcher, refs, tmp_path, {}, progress=False)
    calls = []

    def prompter(image, boxes):
        calls.append(boxes.tolist())
        masks = np.zeros((len(boxes), *image.shape[:2]), bool)
        masks[:, 45:95, 45:95] = True
        return masks

    bank = build_bank(matcher, refs, tmp_path, {}, box_prompter=prompter, progress=False)
    assert calls == [[[40.0, 40.0, 100.0, 100.0]]] and bank.prototypes.shape == (2, 64)


# ---- bad input -------------------------------------------------------------------------------
def test_bad_images_and_masks(colorhist, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_rgb(tmp_path / "nope.jpg")
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 50
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.full((20, 30), 77, np.uint8), "L").save(tmp_path / "gray.png")
    assert load_rgb(tmp_path / "rgba.png").shape == (20, 30, 3) and load_rgb(tmp_path / "rgba.png")[0, 0, 0] == 200
    assert (load_rgb(tmp_path / "gray.png") == 77).all()
    # a reference whose mask is empty fails before encoding, naming the annotation
    coco = _coco([{"bbox": [40, 40, 60, 60], "seg": {"size": [200, 200], "counts": [40000]}},
                  {"bbox": [50, 50, 80, 80], "cat": 2}])
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(tmp_path / "1.png")
    refs, _ = sample_references(coco, 1, 0)
    with pytest.raises(ValueError, match="annotation 1 .*empty mask"):
        build_bank(load_matcher("colorhist_8"), refs, tmp_path, {}, progress=False)


def test_empty_proposals_are_dropped_and_grayscale_targets_work(bank, tmp_path):
    gray = np.repeat(np.full((64, 64, 1), 128, np.uint8), 3, 2)
    masks = torch.zeros(2, 16, 16)
    masks[1, 4:12, 4:12] = 1  # proposal 0 is empty
    full = torch.zeros(2, 64, 64, dtype=torch.bool)
    full[1, 16:48, 16:48] = True

    class Fixed:
        name = "fixed"

        def __call__(self, image, image_id):
            return Proposals(masks, torch.tensor([[0, 0, 0, 0], [16, 16, 48, 48.]])[:len(masks)],
                             torch.ones(len(masks)), (64, 64), lambda idx: full[idx])

    predictor = FewShotPredictor(bank, Fixed(), load_matcher("colorhist_8"), load_config())
    results = predictor.predict(gray, 7)
    # ntt box convention: inclusive max index, so the 32-px square is 31 wide
    assert len(results) <= 1 and all(r["bbox"] == [16.0, 16.0, 31.0, 31.0] for r in results)
    masks = masks[:0]  # no proposal at all (e.g. every SAM2 mask under --iou-thr)
    full = full[:0]
    assert predictor.predict(gray, 8) == []


def test_config_rejects_unknown_keys():
    assert load_config()["proposals"]["points_per_side"] == 32
    assert load_config(["scoring.nms_iou=0.3"]).scoring.nms_iou == 0.3
    with pytest.raises(ValueError, match="nms_iuo"):
        load_config(["scoring.nms_iuo=0.3"])


# ---- scale and faults: shards and resume -----------------------------------------------------
def test_killed_run_resumes_with_byte_identical_results(bank, shapes, tmp_path):
    val = load_coco_json(shapes / "val" / "annotations.json")
    images = images_from_coco(val)
    cfg = load_config({"proposals": {"source": "ground_truth"}})
    predictor = FewShotPredictor(bank, GroundTruthProposals(val), load_matcher("colorhist_8"), cfg)
    root = shapes / "val" / "images"
    run_images(predictor.predict, images, root, tmp_path / "full.json", progress=False)
    seen = []

    def kill_after_four(image_id):
        seen.append(image_id)
        if len(seen) == 4:
            raise KeyboardInterrupt

    out = tmp_path / "resumed.json"
    with pytest.raises(KeyboardInterrupt):
        run_images(predictor.predict, images, root, out, progress=False, on_image=kill_after_four)
    shard = tmp_path / "resumed.json.shard-0.jsonl"
    assert not out.exists() and len(shard.read_bytes().splitlines()) == 4
    with open(shard, "ab") as fh:  # a half-written line, as from a kill mid-write
        fh.write(b'{"image_id": 99, "resu')
    redone = []
    run_images(predictor.predict, images, root, out, progress=False, on_image=redone.append)
    assert redone == [e.image_id for e in images[4:]]  # finished images are skipped
    assert out.read_bytes() == (tmp_path / "full.json").read_bytes() and not shard.exists()


def test_missing_images_fail_before_any_output(bank, shapes, tmp_path):
    val = load_coco_json(shapes / "val" / "annotations.json")
    images = images_from_coco(val)
    images[3] = type(images[3])(images[3].image_id, "missing.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        run_images(lambda im, i: [], images, shapes / "val" / "images", tmp_path / "out.json", progress=False)
    assert list(tmp_path.iterdir()) == []


# ---- command line ----------------------------------------------------------------------------
def test_cli_memory_run_eval(colorhist, shapes, tmp_path, capsys):
    from sam2_vitplug.cli import main

    train, val = shapes / "train", shapes / "val"
    assert main(["fewshot", "memory", "--refs", str(train / "annotations.json"), "--images", str(train / "images"),
                 "--shots", "5", "--seed", "0", "--encoder", "colorhist_8", "--out", str(tmp_path / "bank.safetensors"),
                 "--device", "cpu"]) == 0
    assert main(["fewshot", "run", "--bank", str(tmp_path / "bank.safetensors"), "--images", str(val / "images"),
                 "--ann", str(val / "annotations.json"), "--proposals", "ground_truth", "--out",
                 str(tmp_path / "res.json"), "--eval", "--vis", "1", "--quiet", "--device", "cpu"]) == 0
    stats = json.loads((tmp_path / "res.eval.json").read_text())
    assert stats["segm"]["AP"] >= 0.9 and (tmp_path / "res_vis" / "1.png").is_file()
    # --vis-min-score above every score draws nothing: the overlay is the image itself (the default draws)
    assert main(["fewshot", "run", "--bank", str(tmp_path / "bank.safetensors"), "--images", str(val / "images"),
                 "--ann", str(val / "annotations.json"), "--proposals", "ground_truth", "--out",
                 str(tmp_path / "hi.json"), "--vis", "1", "--vis-min-score", "2", "--quiet", "--device", "cpu"]) == 0
    from PIL import Image

    image = np.asarray(Image.open(val / "images" / "000001.jpg").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "hi_vis" / "1.png")), image)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "res_vis" / "1.png")), image)
    assert main(["fewshot", "eval", "--ann", str(val / "annotations.json"), "--results", str(tmp_path / "res.json"),
                 "--bank", str(tmp_path / "bank.safetensors"), "--out", str(tmp_path / "eval2.json")]) == 0
    assert json.loads((tmp_path / "eval2.json").read_text()) == stats
    out = capsys.readouterr().out
    assert "AP " in out and "skipped" in out
    # a bank from another encoder: one clear line, exit code 2, no results written
    assert main(["fewshot", "run", "--bank", str(tmp_path / "bank.safetensors"), "--images", str(val / "images"),
                 "--ann", str(val / "annotations.json"), "--proposals", "ground_truth", "--encoder",
                 "colorhist_coarse", "--out", str(tmp_path / "bad.json"), "--device", "cpu"]) == 2
    assert "built with encoder 'colorhist_8'" in capsys.readouterr().err and not (tmp_path / "bad.json").exists()
