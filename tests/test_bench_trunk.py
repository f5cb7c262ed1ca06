"""Smoke test of ``tools/bench_trunk.py``: the ``--quick`` run (ViT-S geometry, 256 px, Hiera-t,
one repeat) and one fresh-subprocess memory cell, offline, on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_trunk.py"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
TRUNK_VARIANTS = {"trunk:bilinear+refine", "trunk:bilinear", "trunk:deconv+refine", "trunk:deconv"}


def test_quick_run_writes_json_and_prints_table(tmp_path):
    out = tmp_path / "nested" / "b.json"
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--quick", "--out", str(out)],
        capture_output=True, text=True, env=ENV, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["status"] == "complete"
    assert not list(out.parent.glob("*.tmp")), "temp file left behind"

    rows = data["rows"]
    variants = {(r["model"], r["variant"]) for r in rows}
    expected = {("dinov2_small", "raw_vit"), ("dinov2_small", "encoder:bilinear+refine"), ("hiera_t", "hiera:trunk")}
    expected |= {("dinov2_small", v) for v in TRUNK_VARIANTS}
    assert expected <= variants, expected - variants
    for r in rows:
        assert r["image_size"] == 256
        assert r["median_s"] > 0 and all(t > 0 for t in r["times_s"]), r
        assert r["params_m"] > 0
    raw = next(r for r in rows if r["variant"] == "raw_vit")
    assert raw["vit_input_size"] == [224, 224]  # patch 14: 256 / 16 * 14
    assert raw["ratio_vs_raw"] == 1.0
    trunk = next(r for r in rows if r["variant"] == "trunk:bilinear+refine")
    assert trunk["params_m"] > raw["params_m"]
    assert trunk["ratio_vs_raw"] > 0

    assert data["machine"]["torch"] and data["machine"]["device"] == "cpu"
    assert data["machine"]["torch_num_threads"] >= 1 and data["machine"]["cpu_count"] >= 1
    assert data["arguments"]["quick"] is True
    assert data["memory_method"]["mode"] in ("inprocess", "subprocess")
    summary = data["summary"]
    config = next(c for c in summary["per_config"] if c["vit"] == "S" and c["image_size"] == 256)
    assert set(config["variants"]) == TRUNK_VARIANTS | {"encoder:bilinear+refine"}
    assert summary["target"]["measured"] is False  # ViT-L at 1024 is not part of --quick
    assert data["pyramid_ops"] and data["pyramid_ops"][0]["variants"]["trunk:bilinear+refine"]["pyramid_s"] > 0

    # the table goes to stdout
    assert "median s" in proc.stdout and "x raw" in proc.stdout
    for name in ("raw_vit", "trunk:bilinear+refine", "trunk:deconv", "encoder:bilinear+refine", "hiera_t"):
        assert name in proc.stdout


def test_memory_subprocess_cell():
    spec = {"device": "cpu", "dtype": "fp32", "image_size": 256, "variant": "trunk:bilinear+refine",
            "vit": "S", "hiera": None, "upsample_mode": "bilinear", "refine_highres": True}
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--_mem-cell", json.dumps(spec)],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["peak_mib"] > 0
    assert result["forward_s"] > 0
    assert result["method"] in ("VmHWM-reset", "ru_maxrss")
