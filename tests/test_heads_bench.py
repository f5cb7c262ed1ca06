"""tools/bench_seghead.py runs end to end on tiny settings and writes its JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_seghead  # noqa: E402


@pytest.mark.slow
def test_bench_seghead_tiny(tiny_models, tmp_path, capsys):
    out = tmp_path / "bench.json"
    tiny = str(tiny_models["dinov2"])
    assert bench_seghead.main([
        "--out", str(out), "--device", "cpu", "--encoders", tiny, "--image-size", "64", "--repeats", "1",
        "--num-classes", "5", "--head-opt", "upernet:head.channels=16", "--head-opt", "mask2former:head.dec_layers=1",
        "--head-opt", "mask2former:head.hidden_dim=16", "--head-opt", "mask2former:head.mask_dim=16",
        "--head-opt", "mask2former:head.ffn_dim=32", "--head-opt", "mask2former:head.num_queries=4",
        "--data-size", "64", "--train-images", "8", "--val-images", "4", "--cache-epochs", "1",
        "--cache-encoder", tiny, "--learn-epochs", "1", "--learn-encoder", tiny, "--heads", "linear,upernet,mask2former",
        "--dtype", "bf16", "--precision-encoder", tiny,
    ]) == 0
    report = json.loads(out.read_text())
    assert [r["head"] for r in report["throughput"]] == ["linear", "upernet", "mask2former"]
    for row in report["throughput"]:
        assert row["images_per_s"] > 0 and row["head_over_backbone"] > 0 and row["cached_step_speedup"] > 1
    assert report["cache"]["speedup_total"] > 0 and len(report["cache"]["cached_epoch_s"]) == 1
    learning = report["learning"]
    assert 0 <= learning["baseline_majority"]["mIoU"] <= 1 and learning["baseline_majority"]["class"] == 0
    assert all(0 <= learning[h]["best_mIoU"] <= 1 for h in ("linear", "upernet", "mask2former"))
    assert report["dtypes"] == ["fp32", "bf16"]
    speed = report["precision"]["speed"]
    assert [(r["head"], r["variant"]) for r in speed] == [(h, v) for h in ("linear", "upernet", "mask2former")
                                                          for v in ("fp32", "bf16", "bf16_noprecast")]
    assert all(r["x_fp32"] > 0 and 0 <= r.get("pixels_differing", 0) <= 1 for r in speed)
    for head in ("linear", "upernet", "mask2former"):
        cell = report["precision"]["agreement"][head]
        assert 0 <= cell["bf16"]["pixels_differing"] <= 1 and abs(cell["bf16"]["mIoU_diff"]) <= 1
    assert "img/s" in capsys.readouterr().out
