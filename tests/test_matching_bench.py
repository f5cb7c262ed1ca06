"""tools/bench_fewshot.py runs end to end at tiny geometry: table on stdout, JSON at --out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_fewshot  # noqa: E402


@pytest.mark.slow
def test_bench_fewshot_tiny(tiny_models, tmp_path, capsys):
    tiny = tiny_models["dinov2"]
    overrides = [o for o in tiny_overrides(tiny, 128) if "image_size" not in o]
    args = ["--device", "cpu", "--sam2-config", "sam2_vit_dino_s.yaml", "--shared-config", "sam2_vit_dino_s.yaml",
            "--encoders", str(tiny), "--image-size", "128", "--points-per-side", "2", "--images", "1",
            "--warmup", "0", "--classes", "3", "--out", str(tmp_path / "bench.json")]
    for o in overrides + ["++model.image_size=128"]:
        args += ["--sam2-override", o]
    assert bench_fewshot.main(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert set(report["settings"]) == {f"sam2_vit_dino_s+{tiny}", "sam2_vit_dino_s:two_pass", "sam2_vit_dino_s:shared"}
    assert report["settings"]["sam2_vit_dino_s:shared"]["matcher_encoder"] < 1e-3  # no second ViT pass
    bank = report["bank"][str(tiny)]
    assert bank["ratio"] > 1000 and bank["token_map_bytes"] == 1203 * 10 * 37 * 37 * 32 * 4
    assert "shared backbone" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_fewshot_compares_methods(tiny_models, tmp_path, capsys):
    """--method ntt,vitplug times both presets in one run, with the full-resolution merging cost."""
    tiny = tiny_models["dinov2"]
    overrides = [o for o in tiny_overrides(tiny, 128) if "image_size" not in o]
    args = ["--device", "cpu", "--sam2-config", "sam2_vit_dino_s.yaml", "--shared-config", "",
            "--encoders", str(tiny), "--target-hw", "96x128", "--points-per-side", "4", "--images", "1",
            "--warmup", "0", "--classes", "3", "--method", "ntt,vitplug", "--out", str(tmp_path / "bench.json")]
    for o in overrides + ["++model.image_size=128"]:
        args += ["--sam2-override", o]
    assert bench_fewshot.main(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    stem = f"sam2_vit_dino_s+{tiny}"
    assert set(report["settings"]) == {f"{stem}:ntt", f"{stem}:vitplug"}
    assert all(0 <= v["merging_share"] < 1 for v in report["settings"].values())
    assert report["method_ratio"][stem] > 0
    assert report["merging_full_worst_case_s"]["masks"] == 800
    assert "ntt method" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--method"):
        bench_fewshot.main([*args[:-4], "--method", "paper", "--out", str(tmp_path / "x.json")])


@pytest.mark.slow
def test_bench_fewshot_compares_dtypes(tiny_models, tmp_path, capsys):
    """--dtype fp32,bf16 --precast both --flops: three settings in one run, per-stage ratios to fp32,
    a matmul peak per dtype and the GFLOP/s of each heavy stage."""
    tiny = tiny_models["dinov2"]
    overrides = [o for o in tiny_overrides(tiny, 128) if "image_size" not in o]
    args = ["--device", "cpu", "--sam2-config", "sam2_vit_dino_s.yaml", "--shared-config", "",
            "--encoders", str(tiny), "--target-hw", "96x128", "--points-per-side", "4", "--images", "1",
            "--warmup", "0", "--classes", "3", "--dtype", "fp32,bf16", "--precast", "both", "--flops",
            "--out", str(tmp_path / "bench.json")]
    for o in overrides + ["++model.image_size=128"]:
        args += ["--sam2-override", o]
    assert bench_fewshot.main(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    stem = f"sam2_vit_dino_s+{tiny}"
    assert set(report["settings"]) == {f"{stem}:fp32", f"{stem}:bf16", f"{stem}:bf16-autocast-only"}
    assert set(report["matmul_peak_gflops"]) == {"fp32", "bf16"} and min(report["matmul_peak_gflops"].values()) > 0
    assert all(report["stage_flops"][stem][s] > 0 for s in bench_fewshot.FLOP_STAGES)
    assert set(report["dtype_ratio"]) == {f"{stem}:bf16", f"{stem}:bf16-autocast-only"}
    assert report["settings"][f"{stem}:bf16"]["gflops"]["prompt_decoding"] > 0
    assert "/ fp32 (same run)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--dtype fp16 needs a CUDA"):
        bench_fewshot.main([*args[:-2], "--dtype", "fp16", "--out", str(tmp_path / "x.json")])
