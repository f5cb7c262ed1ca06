"""Unit checks of the ntt steps against plain loops / direct formulas, and of the method switches.

Tolerances: float32 sums reassociated (separable pooling vs the upsampled map, matmul vs loops):
1e-5 absolute on unit vectors and overlap fractions in [0, 1].
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F


def _loop_boxes(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [0, 0, 0, 0] if len(ys) == 0 else [xs.min(), ys.min(), xs.max(), ys.max()]


def test_mask_boxes_inclusive_matches_a_loop():
    from sam2_vitplug.matching.ntt_ops import mask_boxes_inclusive

    masks = torch.rand(6, 20, 30) > 0.97
    masks[0] = False
    masks[1, 5, 7] = True  # a single pixel: zero width and height
    ours = mask_boxes_inclusive(masks)
    assert ours.tolist() == [[float(v) for v in _loop_boxes(m)] for m in masks.numpy()]
    assert ours[1, 2] - ours[1, 0] == 0 or masks[1].sum() > 1


def test_hard_upsampled_pooling_equals_the_upsampled_map_mean():
    from sam2_vitplug.matching.ntt_ops import pool_hard_upsampled

    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(16, 9, 9, generator=gen)
    hard = torch.rand(5, 64, 64, generator=gen) > 0.6
    hard[4] = False
    up = F.interpolate(feats[None], size=(64, 64), mode="bilinear", align_corners=False, antialias=True)[0]
    direct = torch.stack([up[:, m].mean(1) for m in hard[:4]])
    ours = pool_hard_upsampled(feats, hard, chunk=2)
    torch.testing.assert_close(ours[:4], F.normalize(direct, dim=-1), atol=1e-5, rtol=0)
    assert torch.equal(ours[4], torch.zeros(16))  # empty mask: zero vector, never NaN


def _loop_ios(masks: np.ndarray, labels, emb: np.ndarray, rank) -> list[float]:
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out = []
    for i in range(len(masks)):
        best = 0.0
        for j in range(len(masks)):
            if labels[j] == labels[i] and rank[j] < rank[i] and masks[i].sum() > 0:
                inter = np.logical_and(masks[i], masks[j]).sum() / masks[i].sum()
                best = max(best, inter * max(0.0, float(emb[i] @ emb[j])))
        out.append(best)
    return out


@pytest.mark.parametrize("order", ["index", "reversed"])
def test_semantic_ios_is_exact_on_full_resolution_masks(order):
    from sam2_vitplug.matching.ntt_ops import semantic_ios

    rng = np.random.default_rng(1)
    masks = np.zeros((12, 70, 93), bool)  # width not a multiple of 8: the packed last byte matters
    for m in masks:
        y, x = rng.integers(0, 60), rng.integers(0, 80)
        m[y:y + rng.integers(3, 40), x:x + rng.integers(3, 40)] = True
    masks[3] = masks[2]  # exact duplicate
    masks[5] = False  # empty
    labels = torch.from_numpy(rng.integers(0, 2, 12))
    emb = torch.from_numpy(rng.normal(size=(12, 8)).astype(np.float32))
    rank = torch.arange(12) if order == "index" else torch.arange(12).flip(0)
    ours = semantic_ios(torch.from_numpy(masks), labels, emb, None if order == "index" else rank)
    ref = _loop_ios(masks, labels.tolist(), emb.numpy(), rank.tolist())
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)


def test_merge_decay_sqrt_and_linear():
    from sam2_vitplug.matching.ntt_ops import merge_decay

    ios = torch.tensor([0.0, 0.75, 1.0])
    assert merge_decay(ios, "sqrt").tolist() == [1.0, 0.5, 0.0]
    assert merge_decay(ios, "linear").tolist() == [1.0, 0.25, 0.0]
    with pytest.raises(ValueError, match="merging.decay"):
        merge_decay(ios, "cubic")


# ---- sampler and crop ----------------------------------------------------------------------------
def _coco(anns, size=200):
    images = [{"id": i, "file_name": f"{i}.png", "width": size, "height": size} for i in (1, 2, 3)]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    full = [{"id": i + 1, "image_id": a.get("image_id", 1), "category_id": a.get("cat", 1), "bbox": a["bbox"],
             "iscrowd": a.get("crowd", 0), "area": 100, "segmentation": [[10, 10, 20, 10, 20, 20]]}
            for i, a in enumerate(anns)]
    return {"images": images, "annotations": full, "categories": cats}


def test_ntt_sampler_rule_one_per_image_and_python_random():
    from sam2_vitplug.matching import sample_references

    coco = _coco([
        {"bbox": [50, 50, 40, 40], "cat": 2, "image_id": 3},  # class 2 appears first in the file
        {"bbox": [10, 10, 50, 50]}, {"bbox": [80, 80, 50, 50]},  # two valid in image 1
        {"bbox": [9, 50, 40, 40], "image_id": 2},  # 9 px from the left border: invalid (< 10)
        {"bbox": [10, 10, 40, 40], "image_id": 2}, {"bbox": [150, 150, 40, 40], "image_id": 3},  # 10 px: valid
        {"bbox": [50, 50, 40, 31], "image_id": 3, "cat": 2},  # tiny
    ])
    refs, report = sample_references(coco, 3, seed=7)
    picked = [r.ann_id for r in refs]
    # the documented draw, written out: per class in order of first appearance, one shared stream
    rng = random.Random(7)
    expect = []
    for cat in (2, 1):
        pool = [a for a in coco["annotations"] if a["category_id"] == cat]
        rng.shuffle(pool)
        seen = set()
        for a in pool:
            if a["id"] in (4, 7) or a["image_id"] in seen:
                continue
            seen.add(a["image_id"])
            expect.append(a["id"])
            if len(seen) == 3:
                break
    assert picked == expect
    assert len({r.image_id for r in refs if r.category_id == 1}) == len([r for r in refs if r.category_id == 1])
    assert report.skipped["border"] == 1 and report.skipped["tiny"] == 1
    with pytest.raises(ValueError, match="memory.sampler"):
        sample_references(coco, 1, 0, sampler="numpy")


def test_ntt_crop_is_clipped_at_the_border_and_truncated():
    from sam2_vitplug.matching.bank import crop_box_ntt, crop_reference_ntt

    # box (10.7, 20.2, 40, 30) -> ints (10, 20, 50, 50): side 40 * 1.2 = 48 around (30, 35)
    assert crop_box_ntt([10.7, 20.2, 40, 30], 0.2, 100, 100) == (6, 11, 54, 59)
    x0, y0, x1, y1 = crop_box_ntt([0, 0, 40, 40], 0.2, 100, 100)  # clipped: not square any more
    assert (x0, y0) == (0, 0) and (x1, y1) == (44, 44)
    image = np.zeros((100, 100, 3), np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[0:40, 0:40] = True
    pixels, soft = crop_reference_ntt(image, mask, [0, 0, 40, 40], 0.2, 28)
    assert pixels.shape == (3, 28, 28) and soft.shape == (28, 28) and 0 < soft.mean() < 1


# ---- grid, threshold, config switches -------------------------------------------------------------
def test_ntt_point_grid_includes_the_border():
    from sam2_vitplug.matching.proposals import point_grid_ntt

    pts = point_grid_ntt(32, 1024)
    assert pts.shape == (1024, 2)
    assert pts[0].tolist() == [0.5, 0.5] and pts[-1].tolist() == [1023.5, 1023.5]
    assert pts[1].tolist() == [33.5, 0.5]  # row-major here (x varies first)


def test_presets_differ_only_in_switches_and_unknown_method_is_named():
    from sam2_vitplug.matching import load_config

    ntt, ours = load_config(), load_config(method="vitplug")
    assert (ntt.method, ours.method) == ("ntt", "vitplug")
    assert ntt.memory.sampler == "ntt" and ours.memory.sampler == "vitplug"
    assert ntt.scoring.iou_factor is False and ours.scoring.iou_factor is True
    assert ntt.merging.masks == "full" and ours.merging.masks == "lowres"
    assert load_config(["method=vitplug"]).method == "vitplug"
    # one switch flipped on top of a preset
    assert load_config(["scoring.iou_factor=true"]).scoring.iou_factor is True
    with pytest.raises(ValueError, match="unknown few-shot method 'paper'"):
        load_config(method="paper")


def test_bank_refuses_a_run_of_another_method():
    from sam2_vitplug.matching import MemoryBank

    bank = MemoryBank(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), [1, 2], ["a", "b"], {"method": "ntt"})
    bank.check_method("ntt")
    with pytest.raises(ValueError, match="built with method 'ntt' but this run uses 'vitplug'.*--method ntt"):
        bank.check_method("vitplug")
    MemoryBank(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), [1, 2], ["a", "b"], {}).check_method("ntt")


def test_cli_run_with_a_bank_of_another_method_exits_2(tmp_path, capsys):
    from sam2_vitplug.cli import main
    from sam2_vitplug.matching import MemoryBank, save_bank

    bank = tmp_path / "bank.safetensors"
    save_bank(MemoryBank(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), [1, 2], ["a", "b"],
                         {"method": "ntt", "format": "sam2_vitplug.fewshot_bank/1", "encoder": "x", "input_size": 14}),
              bank)
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "images" / "a.png")
    code = main(["fewshot", "run", "--bank", str(bank), "--images", str(tmp_path / "images"), "--method", "vitplug",
                 "--out", str(tmp_path / "out.json")])
    assert code == 2
    assert "built with method 'ntt'" in capsys.readouterr().err
