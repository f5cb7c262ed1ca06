"""Reproducible across processes: two separate processes on the same inputs write the same bytes,
and a ``fewshot run`` killed with SIGKILL then rerun writes what an uninterrupted run writes.

Each command runs as its own ``python -m sam2_vitplug.cli`` process (fresh RNG, fresh imports),
on the packaged demo model so that nothing depends on files made in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import clear_references

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from make_synthetic_dataset import DatasetSpec, make_dataset  # noqa: E402

CLI = [sys.executable, "-m", "sam2_vitplug.cli"]
SAM2 = ["--sam2-config", "sam2_vit_demo"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _run(*args: str, timeout: int = 300) -> None:
    proc = subprocess.run([*CLI, *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("repro") / "shapes",
                        DatasetSpec(train=4, val=6, image_size=256, seed=21, min_instances=2, max_instances=3))


@pytest.fixture(scope="module")
def refs(shapes) -> Path:
    return clear_references(shapes / "train" / "annotations.json", shapes / "refs.json")


def _memory(shapes: Path, refs: Path, out: Path) -> None:
    _run("fewshot", "memory", "--refs", str(refs), "--images", str(shapes / "train" / "images"), "--shots", "2",
         "--encoder", "dinov2_demo", "--out", str(out), "--device", "cpu", "--set", "memory.min_size=16")


@pytest.fixture(scope="module")
def bank(shapes, refs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repro_bank") / "bank.safetensors"
    _memory(shapes, refs, out)
    return out


def _run_args(shapes: Path, bank: Path, out: Path) -> list[str]:
    return ["fewshot", "run", "--bank", str(bank), "--images", str(shapes / "val" / "images"),
            "--points-per-side", "8", "--quiet", "--device", "cpu", "--out", str(out), *SAM2]


def test_fewshot_memory_twice_same_bytes(shapes, refs, bank, tmp_path):
    again = tmp_path / "bank.safetensors"
    _memory(shapes, refs, again)
    assert again.read_bytes() == bank.read_bytes()


def test_fewshot_run_twice_same_bytes_and_sigkill_resume(shapes, bank, tmp_path):
    first, second, resumed = tmp_path / "a" / "r.json", tmp_path / "b" / "r.json", tmp_path / "c" / "r.json"
    _run(*_run_args(shapes, bank, first))
    _run(*_run_args(shapes, bank, second))
    assert second.read_bytes() == first.read_bytes()
    assert first.read_bytes().count(b'"image_id"') > 0

    # SIGKILL once at least one image is in the shard and the run is not done, then rerun
    resumed.parent.mkdir(parents=True)
    proc = subprocess.Popen([*CLI, *_run_args(shapes, bank, resumed)], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shard = resumed.parent / f"{resumed.name}.shard-0.jsonl"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if shard.is_file() and shard.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not resumed.is_file() and shard.is_file(), "killed mid-run: only the shard exists"
    done_before = shard.read_bytes().count(b"\n")
    assert 1 <= done_before < 6
    _run(*_run_args(shapes, bank, resumed))
    assert resumed.read_bytes() == first.read_bytes()
    assert not list(resumed.parent.glob("*.shard-*")), "the merge removes the shards"


def test_features_twice_same_bytes(shapes, tmp_path):
    image = sorted((shapes / "val" / "images").iterdir())[0]
    outs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        _run("features", str(image), "--encoder", "dinov2_demo", "--transforms", "2", "--input-size", "112",
             "--device", "cpu", "--quiet", "--out", str(folder / "f.safetensors"), "--pca", str(folder / "pca.png"))
        outs.append(_files(folder))
    assert outs[0] == outs[1] and set(outs[0]) == {"f.safetensors", "pca.png"}


def test_seg_predict_twice_same_bytes(shapes, tmp_path):
    from sam2_vitplug.cli import main
    from sam2_vitplug.heads.data import write_class_masks_from_coco

    write_class_masks_from_coco(shapes / "train" / "annotations.json", tmp_path / "masks")
    assert main(["seg", "train", "--head", "linear", "--encoder", "dinov2_demo", "--num-classes", "5",
                 "--image-paths", str(shapes / "train" / "images"), "--mask-paths", str(tmp_path / "masks"),
                 "--image-size", "112", "--batch-size", "2", "--epochs", "1", "--warmup-epochs", "0",
                 "--num-workers", "0", "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress",
                 "--device", "cpu"]) == 0
    outs = []
    for name in ("a", "b"):
        _run("seg", "predict", "--checkpoint", str(tmp_path / "ck" / "last.pt"), "--input",
             str(shapes / "val" / "images"), "--out", str(tmp_path / name), "--no-progress", "--device", "cpu")
        files = _files(tmp_path / name)
        # predict.json is the run's report: its "seconds" and "fps" measure this run, nothing else may differ
        report = json.loads(files.pop("predict.json"))
        assert report.pop("seconds") > 0 and report.pop("fps") > 0
        outs.append((files, report))
    assert outs[0] == outs[1] and len(outs[0][0]) == 12  # <stem>_mask.png and <stem>_overlay.png per image
