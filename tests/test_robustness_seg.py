"""Issue 15, ``seg``: reruns resume only matching runs, one directory per run (lock), corrupt
checkpoints, pairing by file stem, bad masks/images/options, output files' modes, overlays,
Ctrl-C. Tiny data (6 pairs of 32 px) and a tiny random ViT, so each training run takes ~1 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_vitplug.cli import main
from sam2_vitplug.heads import runstate
from sam2_vitplug.heads.data import pair_paths, validate_pairs
from sam2_vitplug.heads.model import SegModelConfig, build_seg_model, read_checkpoint, save_checkpoint
from sam2_vitplug.heads.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def _write_data(root: Path, n: int = 6, size: int = 32, mask_value: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "msk").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "img" / f"s{i}.jpg")
        mask = (rng.random((size, size)) > 0.5).astype(np.uint8) if mask_value is None else \
            np.full((size, size), mask_value, np.uint8)
        Image.fromarray(mask, mode="L").save(root / "msk" / f"s{i}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _write_data(tmp_path_factory.mktemp("seg_robust"))


def _cfgs(tiny_models, data: Path, ck: Path, **kw):
    model_cfg = SegModelConfig(head="linear", encoder=str(tiny_models["dinov2"]), num_classes=2, image_size=32)
    cfg = TrainConfig(image_paths=str(data / "img"), mask_paths=str(data / "msk"), checkpoint_dir=str(ck), epochs=2,
                      batch_size=3, num_workers=0, lr=1e-3, progress=False, device="cpu")  # warmup: the default
    return model_cfg, replace(cfg, **kw)


@pytest.fixture(scope="module")
def checkpoint(tiny_models, tmp_path_factory) -> Path:
    model_cfg = SegModelConfig(head="linear", encoder=str(tiny_models["dinov2"]), num_classes=2, image_size=32)
    path = tmp_path_factory.mktemp("ck") / "best.pt"
    save_checkpoint(path, build_seg_model(model_cfg), epoch=1)
    return path


def _seg_args(tiny_models, data: Path, ck: Path, *extra: str) -> list[str]:
    return ["seg", "train", "--head", "linear", "--encoder", str(tiny_models["dinov2"]), "--num-classes", "2",
            "--image-paths", str(data / "img"), "--mask-paths", str(data / "msk"), "--image-size", "32",
            "--batch-size", "3", "--num-workers", "0", "--no-progress", "--device", "cpu", "--checkpoint-dir", str(ck),
            *extra]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---- rerun: resume when the fingerprint matches, refuse otherwise --------------------------------
def test_rerun_resumes_refuses_other_settings_and_overwrite_starts_afresh(tiny_models, data, tmp_path, capsys):
    ck = tmp_path / "ck"
    model_cfg, cfg = _cfgs(tiny_models, data, ck, epochs=2)  # default warmup fits --epochs 2
    train(model_cfg, cfg)
    last = read_checkpoint(ck / "last.pt")
    assert last["epoch"] == 2 and (ck / runstate.FINGERPRINT_FILE).is_file() and not (ck / "train.lock").exists()
    stamp = (ck / "last.pt").stat().st_mtime_ns
    assert train(model_cfg, cfg)["epoch"] == 2  # same settings, already complete: resumes, trains nothing
    assert (ck / "last.pt").stat().st_mtime_ns == stamp and "resuming" in capsys.readouterr().err

    other = _write_data(tmp_path / "other", n=5)
    refused = {
        "lr 0.001 -> 0.01": (model_cfg, replace(cfg, lr=1e-2)),
        "epochs 2 -> 3": (model_cfg, replace(cfg, epochs=3)),
        "num_classes 2 -> 3": (replace(model_cfg, num_classes=3), cfg),
        "train data (6 -> 5 pairs; dropped: 's5.jpg')": (model_cfg, replace(cfg, image_paths=str(other / "img"),
                                                                            mask_paths=str(other / "msk"))),
    }
    for expected, (m, c) in refused.items():
        with pytest.raises(ValueError) as err:
            train(m, c)
        assert expected in str(err.value) and "--overwrite" in str(err.value), str(err.value)
    assert (ck / "last.pt").stat().st_mtime_ns == stamp  # nothing touched

    train(model_cfg, replace(cfg, lr=1e-2, epochs=1, overwrite=True))
    fresh = read_checkpoint(ck / "last.pt")
    assert fresh["epoch"] == 1 and len(fresh["history"]) == 1 and fresh["fingerprint"]["train"]["lr"] == 1e-2
    assert not (ck / "epoch_0002.pt").exists()  # the earlier run's files are gone


def test_explicit_resume_with_other_settings_is_refused(tiny_models, data, tmp_path):
    model_cfg, cfg = _cfgs(tiny_models, data, tmp_path / "a", epochs=1)
    train(model_cfg, cfg)
    with pytest.raises(ValueError, match=r"--resume-checkpoint .* other settings \(lr 0.001 -> 0.5"):
        train(model_cfg, replace(cfg, lr=0.5, checkpoint_dir=str(tmp_path / "b"),
                                 resume_checkpoint=str(tmp_path / "a" / "last.pt")))
    assert not (tmp_path / "b").exists()


def test_unknown_content_and_lock_refuse_the_directory(tiny_models, data, tmp_path):
    model_cfg, cfg = _cfgs(tiny_models, data, tmp_path / "ck", epochs=1)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"is not empty \(notes.txt\) and has no run_fingerprint.json.*--overwrite"):
        train(model_cfg, cfg)
    (tmp_path / "ck" / "notes.txt").unlink()
    with runstate.directory_lock(tmp_path / "ck"):  # another run holds the directory
        with pytest.raises(ValueError, match=rf"in use by another run \(pid {os.getpid()} .*train.lock"):
            train(model_cfg, cfg)
    assert list((tmp_path / "ck").iterdir()) == []  # the lock file went with the lock


# ---- corrupt checkpoints: one line, exit 2, nothing written ------------------------------------
@pytest.mark.parametrize("kind", ["zero_byte", "truncated", "text"])
def test_corrupt_checkpoints_are_one_line(tiny_models, data, checkpoint, tmp_path, capsys, kind):
    bad = tmp_path / "bad.pt"
    content = {"zero_byte": b"", "truncated": checkpoint.read_bytes()[:4000], "text": b"not a checkpoint\n"}[kind]
    bad.write_bytes(content)
    expected = {"zero_byte": "is empty (0 bytes)", "truncated": "cannot be read as a torch checkpoint: it is truncated",
                "text": "it is not a torch file"}[kind]
    image = sorted((data / "img").iterdir())[0]
    commands = {
        "train": _seg_args(tiny_models, data, tmp_path / "ck", "--epochs", "1", "--resume-checkpoint", str(bad)),
        "eval": ["seg", "eval", "--checkpoint", str(bad), "--image-paths", str(data / "img"), "--mask-paths",
                 str(data / "msk"), "--out", str(tmp_path / "eval.json"), "--device", "cpu"],
        "predict": ["seg", "predict", "--checkpoint", str(bad), "--input", str(image), "--out", str(tmp_path / "pred"),
                    "--device", "cpu"],
    }
    for name, argv in commands.items():
        err = _one_line_error(capsys, argv)
        assert expected in err and str(bad) in err, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


# ---- data and option checks --------------------------------------------------------------------
def test_masks_pair_by_stem_and_a_lonely_file_is_named(tmp_path):
    root = _write_data(tmp_path, n=3)
    pairs = pair_paths(str(root / "img"), str(root / "msk"))
    assert [(i.stem, m.stem) for i, m in pairs] == [("s0", "s0"), ("s1", "s1"), ("s2", "s2")]
    (root / "msk" / "s1.png").rename(root / "msk" / "z1.png")  # sorted order would now mislabel s1 and s2
    with pytest.raises(ValueError, match=r"image '.*s1\.jpg' has no mask 's1\.png'; mask '.*z1\.png' has no image"):
        pair_paths(str(root / "img"), str(root / "msk"))


def test_all_ignore_masks_are_refused(tiny_models, tmp_path):
    root = _write_data(tmp_path / "d", n=3, mask_value=255)
    model_cfg, cfg = _cfgs(tiny_models, root, tmp_path / "ck")
    with pytest.raises(ValueError, match=r"every pixel of the 3 training masks .* is 255 \(ignore\)"):
        train(model_cfg, cfg)
    assert not (tmp_path / "ck").exists()


def test_truncated_jpeg_is_caught_by_the_pre_check(tmp_path):
    root = _write_data(tmp_path, n=2, size=64)
    jpeg = root / "img" / "s1.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:400])
    with pytest.raises(ValueError, match=r"image '.*s1\.jpg' cannot be decoded .*truncated"):
        validate_pairs(pair_paths(str(root / "img"), str(root / "msk")), num_classes=2)


@pytest.mark.parametrize("argv_extra, expected", [
    (["--head-opt", "head.nonexistent=3"], "--head-opt head.nonexistent=3: the linear head has no option 'nonexistent'"),
    (["--head-opt", "trunk.x=1"], "'trunk' is not a section"),
    (["--warmup-epochs", "5", "--epochs", "2"], "--warmup-epochs must be in 0..--epochs (2), got 5"),
    (["--device", "tpu9"], "--device 'tpu9' is not a device"),
])
def test_bad_train_options_are_one_line(tiny_models, data, tmp_path, capsys, argv_extra, expected):
    err = _one_line_error(capsys, _seg_args(tiny_models, data, tmp_path / "ck", *argv_extra))
    assert expected in err
    assert not (tmp_path / "ck").exists()


def test_output_paths_naming_the_wrong_kind_are_refused(tiny_models, data, checkpoint, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("x")
    image = sorted((data / "img").iterdir())[0]
    assert "--checkpoint-dir '" in _one_line_error(capsys, _seg_args(tiny_models, data, taken, "--epochs", "1"))
    err = _one_line_error(capsys, ["seg", "predict", "--checkpoint", str(checkpoint), "--input", str(image),
                                   "--out", str(taken), "--device", "cpu"])
    assert "--out" in err and "is an existing file" in err
    err = _one_line_error(capsys, ["seg", "eval", "--checkpoint", str(checkpoint), "--image-paths", str(data / "img"),
                                   "--mask-paths", str(data / "msk"), "--out", str(tmp_path), "--device", "cpu"])
    assert "is an existing folder" in err
    assert taken.read_text() == "x"


# ---- output files: the umask's mode; overlays; Ctrl-C -------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_seg_outputs_respect_the_umask(tiny_models, data, checkpoint, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        model_cfg, cfg = _cfgs(tiny_models, data, tmp_path / "ck", epochs=1, validate=True)
        train(model_cfg, cfg)
        image = sorted((data / "img").iterdir())[0]
        assert main(["seg", "predict", "--checkpoint", str(checkpoint), "--input", str(image), "--out",
                     str(tmp_path / "pred"), "--no-progress", "--device", "cpu"]) == 0
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"last.pt", "best.pt", "epoch_0001.pt", "history.json", "curves.png",
                                       "run_fingerprint.json", "predict.json", f"{image.stem}_overlay.png"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(mode) for p in files}


def test_overlay_leaves_the_background_unpainted():
    from sam2_vitplug.heads.infer import overlay

    rgb = np.full((8, 8, 3), 100, np.uint8)
    labels = np.zeros((8, 8), np.int64)
    labels[:, 4:] = 1
    shown = overlay(rgb, labels, ["bg", "thing"])[:8, :8]
    assert (shown[:, :4] == 100).all() and not (shown[:, 4:] == 100).all()
    painted = overlay(rgb, labels, ["bg", "thing"], background=None)[:8, :8]
    assert not (painted[:, :4] == 100).all()


def test_ctrl_c_stops_with_one_line_and_the_rerun_resumes(tiny_models, data, tmp_path):
    ck = tmp_path / "ck"
    argv = [sys.executable, "-m", "sam2_vitplug.cli",
            *_seg_args(tiny_models, data, ck, "--epochs", "400", "--save-interval", "1000")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.time() + 240
    while not (ck / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume" and "Traceback" not in err
    epoch = read_checkpoint(ck / "last.pt")["epoch"]
    assert 1 <= epoch < 400 and not (ck / "train.lock").exists()
    assert not [p.name for p in ck.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    # the same command again resumes (stopped right away: the resume line comes before any epoch)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    line = ""
    while "resuming" not in line and proc.poll() is None:
        line = proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert f"at epoch {epoch}/400" in line or f"at epoch {epoch + 1}/400" in line, line
