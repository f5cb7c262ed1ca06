"""Adaptive point prompting: the grid schedule, coverage rules, stopping, config and CLI wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2_vitplug.matching import load_config
from sam2_vitplug.matching.adaptive import AdaptiveConfig, adaptive_decode, covered_at, grid_rounds
from sam2_vitplug.matching.proposals import adaptive_from_config, point_grid

SIDE, H, W, LOW = 16, 60, 80, 32


def test_grid_rounds_partition_the_grid_coarse_first():
    rounds = grid_rounds(SIDE, 4)
    assert [len(r) for r in rounds] == [16, 64, 176]  # 4x4, the 8x8 lattice (disjoint), then the rest
    every = np.concatenate(rounds)
    assert sorted(every.tolist()) == list(range(SIDE * SIDE))  # each grid point exactly once
    rows, cols = np.divmod(rounds[0], SIDE)
    assert set(rows.tolist()) == set(cols.tolist()) == {2, 6, 10, 14}  # centred in the 4x4 blocks
    assert [len(r) for r in grid_rounds(SIDE, SIDE)] == [SIDE * SIDE]


@pytest.mark.parametrize("start", [0, 3, 32])
def test_bad_start_is_rejected_with_the_fix(start):
    with pytest.raises(ValueError, match=f"start={start} must divide points_per_side=16"):
        grid_rounds(SIDE, start)


def test_covered_at_maps_image_pixels_to_the_coverage_grid():
    coverage = torch.zeros(LOW, LOW, dtype=torch.bool)
    coverage[:, : LOW // 2] = True  # the left half of the image
    pts = np.array([[1.0, 1.0], [W / 2 - 1, H - 1], [W / 2 + 1, 0.0], [W - 0.5, H - 0.5]], np.float32)
    assert covered_at(coverage, pts, H, W).tolist() == [True, True, False, False]


class FakeDecoder:
    """Each decoded grid point gives a mask: ``region(point) -> (LOW, LOW) bool`` with IoU ``iou``."""

    def __init__(self, region, iou: float = 0.9):
        self.points = point_grid(SIDE, H, W)
        self.region, self.iou, self.calls = region, iou, []

    def __call__(self, idx: np.ndarray, thr: float | None):
        self.calls.append(np.asarray(idx).copy())
        masks = torch.stack([self.region(self.points[i]) for i in idx]).float() * 20 - 10  # logits
        iou = torch.full((len(idx),), self.iou)
        keep = iou >= thr if thr is not None else torch.ones(len(idx), dtype=torch.bool)
        return masks[keep], iou[keep]


def _run(decoder: FakeDecoder, cfg: AdaptiveConfig, iou_thr: float | None = None):
    return adaptive_decode(decoder, decoder.points, SIDE, H, W, cfg, iou_thr)


def test_whole_image_mask_stops_after_the_coarse_grid():
    dec = FakeDecoder(lambda p: torch.ones(LOW, LOW, dtype=torch.bool))
    logits, iou, stats = _run(dec, AdaptiveConfig(start=4))
    assert stats["decoded_prompts"] == 16 and stats["rounds"] == 1 and stats["coverage"] == 1.0
    assert logits.shape == (16, LOW, LOW) and iou.shape == (16,)


@pytest.mark.parametrize("cfg", [AdaptiveConfig(start=4, max_area=0.5), AdaptiveConfig(start=4, cover_iou=0.95)])
def test_masks_that_do_not_count_leave_points_to_decode(cfg):
    """Whole-image masks above max_area, or below the coverage IoU, cover nothing."""
    dec = FakeDecoder(lambda p: torch.ones(LOW, LOW, dtype=torch.bool), iou=0.9)
    _, _, stats = _run(dec, cfg)
    assert stats["decoded_prompts"] == SIDE * SIDE and stats["coverage"] == 0.0


def test_unstable_masks_do_not_count_as_coverage():
    """Logits of 0.5 everywhere: on at 0, but unstable under the +-1 offset (stability 0)."""
    def blurry(idx, thr):
        return torch.full((len(idx), LOW, LOW), 0.5), torch.full((len(idx),), 0.9)

    points = point_grid(SIDE, H, W)
    assert adaptive_decode(blurry, points, SIDE, H, W, AdaptiveConfig(start=4))[2]["decoded_prompts"] == 16
    stable = AdaptiveConfig(start=4, cover_stability=0.9)
    assert adaptive_decode(blurry, points, SIDE, H, W, stable)[2]["decoded_prompts"] == SIDE * SIDE


def test_masks_below_the_proposal_threshold_can_still_cover():
    """cover_iou below iou_thr: poor masks are no proposals but mark their area explored."""
    whole = FakeDecoder(lambda p: torch.ones(LOW, LOW, dtype=torch.bool), iou=0.3)
    logits, iou, stats = _run(whole, AdaptiveConfig(start=4), iou_thr=0.5)  # cover_iou None: = iou_thr
    assert stats["decoded_prompts"] == SIDE * SIDE and len(logits) == 0
    whole = FakeDecoder(lambda p: torch.ones(LOW, LOW, dtype=torch.bool), iou=0.3)
    logits, iou, stats = _run(whole, AdaptiveConfig(start=4, cover_iou=0.2), iou_thr=0.5)
    assert stats["decoded_prompts"] == 16 and len(logits) == 0 and stats["coverage"] == 1.0


def test_only_uncovered_points_are_decoded():
    """Masks cover the left half: later rounds decode only right-half points."""
    left = torch.zeros(LOW, LOW, dtype=torch.bool)
    left[:, : LOW // 2] = True
    dec = FakeDecoder(lambda p: left if p[0] < W / 2 else torch.zeros(LOW, LOW, dtype=torch.bool))
    _, _, stats = _run(dec, AdaptiveConfig(start=4))
    later = np.concatenate(dec.calls[1:])
    assert (dec.points[later, 0] > W / 2).all()
    assert stats["decoded_prompts"] == 16 + (SIDE * SIDE - 16) // 2


def test_min_gain_stops_when_coverage_saturates():
    """Every point covers its own small square: gains shrink; min_gain ends the search early."""
    def square(p):
        m = torch.zeros(LOW, LOW, dtype=torch.bool)
        r, c = int(p[1] / H * LOW), int(p[0] / W * LOW)
        m[r, c] = True
        return m

    full = _run(FakeDecoder(square), AdaptiveConfig(start=4))[2]
    early = _run(FakeDecoder(square), AdaptiveConfig(start=4, min_gain=0.1))[2]
    assert full["decoded_prompts"] == SIDE * SIDE and full["rounds"] == 3
    assert early["rounds"] == 2 and early["decoded_prompts"] == 16 + 64


def test_config_and_cli_flags(tmp_path, capsys):
    cfg = load_config()
    assert cfg.proposals.engine == "fast" and cfg.proposals.adaptive.enabled is False
    assert adaptive_from_config(cfg.proposals) is None
    on = adaptive_from_config(load_config(["proposals.adaptive.enabled=true", "proposals.adaptive.start=4",
                                           "proposals.adaptive.cover_iou=0.5"]).proposals)
    assert on == AdaptiveConfig(start=4, cover_iou=0.5)
    with pytest.raises(ValueError, match="start=5 must divide points_per_side=32"):
        adaptive_from_config(load_config(["proposals.adaptive.enabled=true", "proposals.adaptive.start=5"]).proposals)
    with pytest.raises(ValueError, match="min_gain"):
        AdaptiveConfig(min_gain=1.5).check(32)

    from sam2_vitplug.cli import main

    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16)).save(images / "a.png")  # an empty folder is refused before the flags
    out = tmp_path / "out.json"
    base = ["fewshot", "run", "--bank", str(tmp_path / "missing.safetensors"), "--images", str(images),
            "--out", str(out), "--device", "cpu"]
    assert main([*base, "--adaptive", "--set", "proposals.adaptive.start=3"]) != 0
    assert "start=3 must divide" in capsys.readouterr().err
    assert main([*base, "--set", "proposals.engine=turbo"]) != 0
    assert "proposals.engine='turbo'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--engine", "turbo"])
    assert not out.exists()  # rejected before any output (the bank is not even read)


def test_proposal_recall_tool_subset_property(tiny_models, tmp_path, capsys):
    """tools/proposal_recall.py end to end on synthetic data with a tiny random SAM2: adaptive
    prompts are a subset of the full grid, so its recall can only be lower or equal."""
    import json
    import sys
    from pathlib import Path

    from conftest import tiny_overrides

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tools"))
    import proposal_recall
    from make_synthetic_dataset import DatasetSpec, make_dataset

    data = make_dataset(tmp_path / "shapes", DatasetSpec(train=1, val=2, image_size=128, seed=1, min_instances=2,
                                                          max_instances=3))
    args = ["--sam2-config", "sam2_vit_dino_s.yaml", "--ann", str(data / "val" / "annotations.json"),
            "--images", str(data / "val" / "images"), "--quick", "--iou-thr", "0", "--threads", "1",
            "--out", str(tmp_path / "recall.json")]
    for o in tiny_overrides(tiny_models["dinov2"], 128):
        args += ["--sam2-override", o]
    assert proposal_recall.main(args) == 0
    report = json.loads((tmp_path / "recall.json").read_text())
    full = report["settings"]["full_grid"]
    adaptive = report["settings"]["adaptive_2_coverthr_stab0"]
    assert full["decoded_prompts_mean"] == 64 and 4 <= adaptive["decoded_prompts_mean"] <= 64
    assert full["instances"] == adaptive["instances"] > 0
    for t in ("0.5", "0.75"):
        assert adaptive[f"recall@{t}"] <= full[f"recall@{t}"]
    assert "recall@0.5" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--ann and --images"):
        proposal_recall.main(["--sam2-config", "x", "--out", str(tmp_path / "x.json")])


def test_coins_split_is_a_real_photo_with_24_coins(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import proposal_recall

    ann, images = proposal_recall.write_coins_split(tmp_path / "coins")
    coco = json.loads(ann.read_text())
    assert len(coco["images"]) == 4 and len(coco["annotations"]) == 4 * 24
    assert all((images / im["file_name"]).is_file() for im in coco["images"])
