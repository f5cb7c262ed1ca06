"""`fewshot memory|run --dtype` through the command line (issue 17): the dtype reaches the bank
and the run's settings record, a run in another dtype than its bank says so in one line,
bf16 agrees with fp32 on the packaged demo model, and fp16 on a CPU is refused before anything
is written. The library-level agreement tests are in tests/test_fewshot_dtype.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import clear_references

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from make_synthetic_dataset import DatasetSpec, make_dataset  # noqa: E402

# bf16 vs fp32 on the trained demo model: docs/precision.md measured 98% of detections matched
# (mask IoU >= 0.9) and mean |score diff| 0.0012 on 20 targets; on these 3 small targets we
# allow one unmatched detection in five and a mean score difference of 0.02 (~16x the measured).
MATCHED_MIN = 0.8
SCORE_DIFF_MAX = 0.02


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot_dtype_cli")
    data = make_dataset(root / "shapes", DatasetSpec(train=3, val=3, image_size=128, seed=11, min_instances=2,
                                                     max_instances=3))
    return root, data, clear_references(data / "train" / "annotations.json", root / "refs.json")


def _memory(shapes, out: Path, *extra: str) -> list[str]:
    _, data, refs = shapes
    return ["fewshot", "memory", "--refs", str(refs), "--images", str(data / "train" / "images"), "--shots", "1",
            "--encoder", "dinov2_demo", "--out", str(out), "--device", "cpu", "--set", "memory.min_size=16", *extra]


def _run(shapes, bank: Path, out: Path, *extra: str) -> list[str]:
    _, data, _ = shapes
    return ["fewshot", "run", "--bank", str(bank), "--images", str(data / "val" / "images"), "--ann",
            str(data / "val" / "annotations.json"), "--quiet", "--device", "cpu", "--sam2-config", "sam2_vit_demo",
            "--points-per-side", "4", "--method", "ntt", "--out", str(out), *extra]


def test_dtype_through_memory_and_run(shapes, tmp_path, capsys):
    from sam2_vitplug.cli import main
    from sam2_vitplug.matching import load_bank
    from sam2_vitplug.matching.evaluation import detection_agreement

    banks, results = {}, {}
    for dtype in ("fp32", "bf16"):
        banks[dtype] = tmp_path / f"bank_{dtype}.safetensors"
        assert main(_memory(shapes, banks[dtype], "--dtype", dtype)) == 0
        assert load_bank(banks[dtype]).dtype == dtype
        out = tmp_path / f"{dtype}.json"
        assert main(_run(shapes, banks[dtype], out, "--dtype", dtype)) == 0
        assert "built in" not in capsys.readouterr().err  # same dtype: no warning
        results[dtype] = json.loads(out.read_text())
    agree = detection_agreement(results["fp32"], results["bf16"])
    assert results["fp32"] and agree["matched"] >= MATCHED_MIN, agree
    assert agree["mean_abs_score_diff"] <= SCORE_DIFF_MAX, agree

    mixed = tmp_path / "mixed.json"  # an fp32 bank in a bf16 run: allowed, one warning line
    assert main(_run(shapes, banks["fp32"], mixed, "--dtype", "bf16")) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "built in" in line]
    assert err == ["warning: the memory bank was built in fp32 and this run computes in bf16; scores may differ "
                   "slightly from an all-bf16 run (rebuild the bank with --dtype bf16 to match)"]



def test_an_interrupted_run_resumes_only_in_its_dtype(shapes, tmp_path, capsys, monkeypatch):
    from sam2_vitplug.cli import main
    from sam2_vitplug.matching.pipeline import FewShotPredictor

    bank = tmp_path / "bank.safetensors"
    assert main(_memory(shapes, bank, "--dtype", "bf16")) == 0
    out = tmp_path / "part" / "r.json"
    original, calls = FewShotPredictor.predict, {"n": 0}

    def predict(self, *a, **k):  # Ctrl-C on the second image
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(FewShotPredictor, "predict", predict)
    assert main(_run(shapes, bank, out, "--dtype", "bf16")) == 130
    monkeypatch.setattr(FewShotPredictor, "predict", original)
    assert json.loads((out.parent / "r.json.settings.json").read_text())["dtype"] == "bf16"
    capsys.readouterr()
    assert main(_run(shapes, bank, out, "--dtype", "fp32")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "other settings" in err and "dtype: 'bf16' -> 'fp32'" in err, err
    assert main(_run(shapes, bank, out, "--dtype", "bf16")) == 0 and out.is_file()


def test_fp16_on_cpu_is_refused_before_anything_is_written(shapes, tmp_path, capsys):
    from sam2_vitplug.cli import main

    for argv in (_memory(shapes, tmp_path / "b.safetensors", "--dtype", "fp16"),
                 _run(shapes, tmp_path / "none.safetensors", tmp_path / "r.json", "--dtype", "fp16")):
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        if argv[1] == "run":  # the bank is read first; a missing one is the first error
            assert code == 2 and "does not exist" in err[-1]
            continue
        assert code == 2 and err[-1] == ("sam2-vitplug: error: --dtype fp16 needs a CUDA or MPS device (this is cpu); "
                                         "use --dtype bf16 on a CPU")
    assert list(tmp_path.iterdir()) == []
