"""Segmentation heads: shapes, ignore label, Hungarian matching, metrics, schedule, input checks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_vitplug.heads import LinearHead, Mask2FormerHead, UPerHead, confusion_matrix, metrics_from_confusion
from sam2_vitplug.heads.data import pair_paths, validate_pairs
from sam2_vitplug.heads.losses import Mask2FormerLoss, pixel_cross_entropy
from sam2_vitplug.heads.matcher import hungarian_match, linear_assignment, solve_assignment
from sam2_vitplug.heads.schedule import lr_factor

M2F_TINY = dict(num_queries=6, hidden_dim=16, mask_dim=16, heads=2, ffn_dim=32, dec_layers=3)


def _levels(batch=2, size=64, chs=(8, 16, 32, 32)):
    torch.manual_seed(0)
    return [torch.randn(batch, c, size // s, size // s) for c, s in zip(chs, (4, 8, 16, 32))]


# ---- heads ----------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [1, 4])
def test_linear_head_shape(layers):
    maps = [torch.randn(2, 32, 4, 5) for _ in range(4)]
    head = LinearHead([32] * 4, num_classes=7, layers=layers)
    assert head(maps).shape == (2, 7, 4, 5)
    assert head.classifier.in_channels == (32 if layers == 1 else 128)
    with pytest.raises(ValueError, match="layers must be 1"):
        LinearHead([32] * 4, 7, layers=2)


def test_upernet_shape():
    head = UPerHead([8, 16, 32, 32], num_classes=5, channels=16)
    assert head(_levels()).shape == (2, 5, 16, 16)  # stride 4 of 64 px


def test_mask2former_shapes_and_semantic_scores():
    head = Mask2FormerHead([8, 16, 32, 32], num_classes=5, **M2F_TINY)
    out = head(_levels())
    assert out["class_logits"].shape == (2, 6, 6)  # K + 1 ("no object")
    assert out["mask_logits"].shape == (2, 6, 16, 16)
    assert len(out["aux"]) == M2F_TINY["dec_layers"]  # one prediction before each layer
    scores = Mask2FormerHead.semantic_scores(out["class_logits"], out["mask_logits"])
    assert scores.shape == (2, 5, 16, 16) and scores.min() >= 0


# ---- ignore label ----------------------------------------------------------------------------
def test_pixel_cross_entropy_ignores_255():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (1, 8, 8))
    target[:, :4] = 255
    loss = pixel_cross_entropy(logits, target)
    changed = logits.detach().clone()
    changed[..., :4, :] += 100 * torch.randn_like(changed[..., :4, :])
    assert torch.allclose(loss, pixel_cross_entropy(changed, target))  # ignored pixels do not count
    loss.backward()
    assert logits.grad[..., :4, :].abs().max() == 0
    all_ignored = pixel_cross_entropy(logits, torch.full_like(target, 255))
    assert all_ignored.item() == 0.0 and all_ignored.requires_grad


def test_mask2former_loss_ignores_255():
    head = Mask2FormerHead([8, 16, 32, 32], num_classes=3, **M2F_TINY)
    out = head(_levels(batch=1))
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[:, 20:40, 20:40] = 2
    labels[:, :, :16] = 255  # the first 4 columns of the stride-4 mask grid
    criterion = Mask2FormerLoss(3)
    loss = criterion(out, labels)
    noisy = {k: v for k, v in out.items()}
    noisy["mask_logits"] = out["mask_logits"].detach().clone()
    noisy["mask_logits"][..., :4] += 50.0
    noisy["aux"] = [(c, m.detach().clone().index_add_(-1, torch.arange(4), torch.full_like(m[..., :4], 50.0)))
                    for c, m in out["aux"]]
    assert torch.allclose(loss, criterion(noisy, labels), atol=1e-5)
    wrong = labels.clone()
    wrong[:, :, :16] = 1  # the same pixels as a real class change the loss
    assert not torch.allclose(loss, criterion(out, wrong))


# ---- Hungarian matching -------------------------------------------------------------------
def _brute_force(cost: np.ndarray) -> float:
    n, m = cost.shape
    if n <= m:
        return min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
    return _brute_force(cost.T)


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 2), (2, 5), (5, 5), (6, 4)])
def test_assignment_matches_brute_force(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        cost = rng.normal(size=shape)
        cost[0, 0] = cost[0, 1] if shape[1] > 1 else cost[0, 0]  # ties happen in practice
        rows, cols = (t.tolist() for t in linear_assignment(torch.from_numpy(cost)))
        assert len(rows) == min(shape) and len(set(rows)) == len(rows) and len(set(cols)) == len(cols)
        assert rows == sorted(rows)
        # exact optimum on the float32 cost linear_assignment hands scipy; 1e-5 covers that rounding
        assert abs(cost[rows, cols].sum() - _brute_force(cost)) < 1e-5
        assert solve_assignment(cost.tolist()) == (rows, cols)  # the deprecated alias gives the same pairs


def test_hungarian_match_finds_the_obvious_pairs():
    # query q predicts target perm[q]'s mask and class: the matching must recover perm
    masks = torch.zeros(3, 16)
    masks[0, :5], masks[1, 5:10], masks[2, 10:] = 1, 1, 1
    classes = torch.tensor([2, 0, 1])
    perm = [2, 0, 1, 1]  # 4 queries, the last is a duplicate with a worse mask
    logits = torch.stack([masks[t] * 20 - 10 for t in perm])
    logits[3] *= 0.1
    cls = torch.full((4, 4), -5.0)
    for q, t in enumerate(perm):
        cls[q, classes[t]] = 5.0
    rows, cols = hungarian_match(cls, logits, classes, masks)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 2, 1: 0, 2: 1}
    assert hungarian_match(cls, logits, classes[:0], masks[:0])[0].numel() == 0
    with pytest.raises(ValueError, match="NaN"):
        linear_assignment(torch.tensor([[float("nan")]]))


# ---- metrics ---------------------------------------------------------------------------------
def test_metrics_against_hand_computed_confusion():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    conf = confusion_matrix(pred, target, num_classes=4)
    # rows: ground truth, columns: prediction; the two 255 pixels are dropped
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(conf, expected)
    m = metrics_from_confusion(conf, ["a", "b", "c", "d"])
    # IoU_a = 1/(2+2-1) = 1/3, IoU_b = 2/(2+3-2) = 2/3, IoU_c = 1/(2+1-1) = 1/2; d absent -> None
    assert m["per_class_iou"] == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 1 / 2, "d": None})
    assert m["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 6) and m["pixels"] == 6
    with pytest.raises(ValueError, match="class id 7"):
        confusion_matrix(pred, torch.full_like(target, 7), num_classes=4)


# ---- schedule --------------------------------------------------------------------------------
def test_warmup_then_cosine_and_poly():
    kw = dict(total_steps=110, warmup_steps=10)
    assert lr_factor(0, **kw) == pytest.approx(0.1) and lr_factor(9, **kw) == pytest.approx(1.0)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(60, **kw) == pytest.approx(0.5)  # cosine midpoint
    assert lr_factor(110, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(60, kind="poly", power=1.0, **kw) == pytest.approx(0.5)
    assert lr_factor(110, kind="cosine", min_ratio=0.1, **kw) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, kind="step", **kw)


# ---- input validation ------------------------------------------------------------------------
def _write_pairs(root, sizes, mask_values=None):
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "msk").mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (10, 20, 30)).save(root / "img" / f"{i}.jpg")
        value = mask_values[i] if mask_values else 0
        Image.new("L", (w, h), value).save(root / "msk" / f"{i}.png")


def test_bad_inputs_name_the_file(tmp_path):
    _write_pairs(tmp_path, [(32, 32), (32, 32)], [1, 255])
    pairs = pair_paths(str(tmp_path / "img" / "*.jpg"), str(tmp_path / "msk" / "*.png"))
    assert validate_pairs(pairs, num_classes=2).tolist() == [0, 32 * 32]  # 255 is fine
    with pytest.raises(ValueError, match=r"1\.png' holds class id 255|0\.png' holds class id 1"):
        validate_pairs(pairs, num_classes=1)
    with pytest.raises(FileNotFoundError, match="matched no files"):
        pair_paths(str(tmp_path / "img" / "*.jpeg"), str(tmp_path / "msk" / "*.png"))
    Image.new("L", (32, 32)).save(tmp_path / "msk" / "2.png")
    with pytest.raises(ValueError, match=r"2 images but 3 masks.*2\.png"):
        pair_paths(str(tmp_path / "img" / "*.jpg"), str(tmp_path / "msk" / "*.png"))
    Image.new("L", (30, 32)).save(tmp_path / "msk" / "1.png")
    (tmp_path / "msk" / "2.png").unlink()
    with pytest.raises(ValueError, match=r"1\.png' is 30x32 but its image .*1\.jpg' is 32x32"):
        validate_pairs(pair_paths(str(tmp_path / "img"), str(tmp_path / "msk")), num_classes=2)
    Image.new("RGB", (32, 32)).save(tmp_path / "msk" / "1.png")
    with pytest.raises(ValueError, match=r"1\.png' has mode RGB"):
        validate_pairs(pair_paths(str(tmp_path / "img"), str(tmp_path / "msk")), num_classes=2)


def test_epoch_sampler_order_depends_on_epoch_only_and_ranks_partition():
    from sam2_vitplug.heads.train import EpochSampler

    a, b = EpochSampler(10, seed=1), EpochSampler(10, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    b.set_epoch(4)
    assert list(a) != list(b)
    ranks = [EpochSampler(7, seed=1, rank=r, world=2) for r in range(2)]
    assert [len(s) for s in ranks] == [4, 4] and set(list(ranks[0]) + list(ranks[1])) == set(range(7))
    val = [EpochSampler(7, 0, r, 2, shuffle=False, pad=False) for r in range(2)]
    assert sorted(list(val[0]) + list(val[1])) == list(range(7)) and [len(s) for s in val] == [4, 3]
