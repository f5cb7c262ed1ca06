"""The sam2-vitplug command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import TINY_OUT_DIMS

from sam2_vitplug.cli import main

BIN = Path(sys.executable).parent / "sam2-vitplug"


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"dino", "dinov3", "ijepa", "vit", "hiera"} <= {e["name"] for e in info["encoder_types"]}
    assert "dinov3_large" in {p["name"] for p in info["presets"]}
    assert "sam2_vit_dino.yaml" in info["configs"]["sam2_vitplug"]
    assert "configs/sam2.1/sam2.1_hiera_l.yaml" in info["configs"]["sam2 (upstream)"]
    assert info["versions"]["sam2"] == "1.1.0" and info["device"] in ("cpu", "cuda", "mps")


def test_console_script_info_tables():
    out = subprocess.run([str(BIN), "info"], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "encoder types" in out.stdout and "dinov2_giant_reg" in out.stdout


def test_check_tiny_model(tiny_models, capsys):
    argv = ["check", "sam2_vit_dinov3_s.yaml", "--pretrained", str(tiny_models["dinov3"]), "--image-size", "256",
            "--override", f"++model.image_encoder.trunk.out_dims=[{','.join(map(str, TINY_OUT_DIMS))}]", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["encoder_type"] == "dinov3" and report["image_size"] == 256
    assert [lv["stride"] for lv in report["levels"]] == [4, 8, 16, 32]
    assert [lv["shape"][1] for lv in report["levels"]] == TINY_OUT_DIMS[::-1]
    assert report["params"]["vit"]["total"] > 0 and report["seconds"]["trunk"] > 0
    assert report["mask_shape"] == [3, 256, 256]


def test_check_tables(tiny_models, capsys):
    assert main(["check", "sam2_vit_dino_s.yaml", "--pretrained", str(tiny_models["dinov2"]), "--image-size", "128",
                 "--override", "++model.image_encoder.trunk.out_dims=auto"]) == 0
    out = capsys.readouterr().out
    assert "ViT runs at 112px" in out and "1x8x32x32" in out and "pyramid" in out


def test_check_errors_are_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["check", "sam2_vit_dino.yaml"]) == 2  # pretrained weights not on this machine
    err = capsys.readouterr().err
    assert err.startswith("sam2-vitplug: error: encoder 'facebook/dinov2-large'") and err.count("\n") == 1
    assert main(["check", "no_such_config.yaml"]) == 2
    assert "no_such_config.yaml" in capsys.readouterr().err
    assert main(["check", "sam2_vit_dino_s.yaml", "--random-init", "--image-size", "100"]) == 2
    assert "multiple of 16" in capsys.readouterr().err
