"""training_ext end to end on CPU through upstream ``Trainer``: tiny random ViTs (``tiny_models``),
128 px synthetic shapes, a few iterations. Each run is a fresh ``python -m training_ext.train``
process (upstream's launcher sets the multiprocessing start method and torch.distributed state)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_OUT_DIMS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from make_synthetic_dataset import DatasetSpec, make_dataset  # noqa: E402

OUT_DIMS = ",".join(map(str, TINY_OUT_DIMS))
TRAIN_IMAGES = 2  # batch 1 -> 2 iterations per epoch


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train_data") / "shapes",
                        DatasetSpec(train=TRAIN_IMAGES, val=1, image_size=128, seed=0))


def _command(exp: Path, data: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "training_ext.train", "--config", "configs/training/tiny_cpu.yaml",
            "--device", "cpu", "--experiment-dir", str(exp), *args, f"dataset.root={data}"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}


def _train(exp: Path, data: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(_command(exp, data, *args), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _ckpt(exp: Path) -> dict:
    return torch.load(exp / "checkpoints" / "checkpoint.pt", map_location="cpu", weights_only=True)


def _vit_args(tiny_models, family: str, *extra: str) -> list[str]:
    from conftest import FAMILIES

    return ["--encoder-type", FAMILIES[family][0], "--encoder-ckpt", str(tiny_models[family]),
            "--encoder-out-dims", OUT_DIMS, *extra]


def _check_run(exp: Path, steps: int) -> dict:
    ckpt = _ckpt(exp)
    assert ckpt["steps"]["train"] == steps and ckpt["epoch"] == 1
    assert not list((exp / "checkpoints").glob("*.tmp")), "a finished save leaves no temp file"
    log = (exp / "logs" / "log.txt").read_text()
    assert log.count("Train Epoch: [0]") == steps and "Losses/train_all_loss" in log  # loss on every step
    assert list((exp / "tensorboard").glob("events.out.tfevents.*"))
    return ckpt


def _build_from_run(exp: Path):
    import yaml
    from sam2.build_sam import build_sam2

    record = yaml.safe_load((exp / "config.yaml").read_text())["vitplug_train"]["build_sam2"]
    return build_sam2(record["config"], ckpt_path=str(exp / "checkpoints" / "checkpoint.pt"), device="cpu",
                      hydra_overrides_extra=record["overrides"])


def test_dino_end_to_end_reload_and_export(tiny_models, shapes, tmp_path):
    """2 iterations of upstream Trainer (CPUTrainer), then the checkpoint through upstream
    build_sam2 (strict load) and the model-only export."""
    from training_ext.export import build_exported, export_checkpoint

    exp = tmp_path / "dino"
    _train(exp, shapes, *_vit_args(tiny_models, "dinov2"))
    ckpt = _check_run(exp, TRAIN_IMAGES)
    assert (exp / "launch" / "tiny_cpu.yaml").is_file()

    model = _build_from_run(exp)  # build_sam._load_checkpoint is strict: any missing/unexpected key raises
    assert type(model).__name__ == "SAM2Base" and model.image_size == 128
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ckpt["model"][name]), name

    from transformers import AutoModel

    initial = AutoModel.from_pretrained(tiny_models["dinov2"]).state_dict()
    trained = {k[len("image_encoder.trunk.vit."):]: v for k, v in ckpt["model"].items()
               if k.startswith("image_encoder.trunk.vit.")}
    assert any(not torch.equal(trained[k], initial[k]) for k in initial), "an unfrozen ViT must change"

    meta = export_checkpoint(exp / "checkpoints" / "checkpoint.pt", tmp_path / "export" / "model.pt")
    assert meta["steps"]["train"] == TRAIN_IMAGES and meta["build_sam2"]["config"] == "sam2_vit_dino_s.yaml"
    clean = torch.load(tmp_path / "export" / "model.pt", weights_only=True)
    assert list(clean) == ["model"] and set(clean["model"]) == set(ckpt["model"])
    rebuilt = build_exported(tmp_path / "export" / "model.pt", device="cpu")
    for name, tensor in rebuilt.state_dict().items():
        assert torch.equal(tensor, ckpt["model"][name]), name


def test_export_rejects_bad_input_before_writing(tmp_path):
    from training_ext.export import export_checkpoint

    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_checkpoint(tmp_path / "none.pt", tmp_path / "out.pt")
    bogus = tmp_path / "bogus.pt"
    torch.save({"state": torch.zeros(1)}, bogus)
    with pytest.raises(ValueError, match="has no 'model' state dict"):
        export_checkpoint(bogus, tmp_path / "out.pt")
    with pytest.raises(ValueError, match="use a .pt, .pth or .safetensors"):
        export_checkpoint(bogus, tmp_path / "out.bin")
    (tmp_path / "exists.pt").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_checkpoint(bogus, tmp_path / "exists.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.pt", "exists.pt"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["dinov3", "ijepa", "hiera"])
def test_other_encoders_end_to_end(tiny_models, shapes, tmp_path, family):
    exp = tmp_path / family
    args = ["--encoder-type", "hiera"] if family == "hiera" else _vit_args(tiny_models, family)
    _train(exp, shapes, *args)
    _check_run(exp, TRAIN_IMAGES)
    model = _build_from_run(exp)
    trunk = type(model.image_encoder.trunk).__name__
    assert trunk == ("Hiera" if family == "hiera" else "ViTTrunkMultiScale")


@pytest.mark.slow
def test_ddp_two_gloo_processes_with_frozen_vit(tiny_models, shapes, tmp_path):
    exp = tmp_path / "ddp"
    _train(exp, shapes, *_vit_args(tiny_models, "dinov2", "--freeze-vit", "--num-gpus", "2"), timeout=500)
    report = json.loads((exp / "logs" / "ddp_params.json").read_text())
    assert report["world_size"] == 2 and report["backend"] == "gloo"
    assert report["frozen_numel"] > 0 and not [n for n in report["synced_names"] if ".trunk.vit." in n]
    ckpt = _ckpt(exp)
    assert ckpt["steps"]["train"] == 1  # 2 images over 2 ranks, batch 1
    from transformers import AutoModel

    initial = AutoModel.from_pretrained(tiny_models["dinov2"]).state_dict()
    for name, tensor in initial.items():  # frozen: bit-identical after the optimizer steps
        assert torch.equal(ckpt["model"][f"image_encoder.trunk.vit.{name}"], tensor), name


@pytest.mark.slow
def test_resume_after_sigkill_reaches_same_step_count(tiny_models, shapes, tmp_path):
    epochs = 3
    exp = tmp_path / "resume"
    args = [*_vit_args(tiny_models, "dinov2"), f"scratch.num_epochs={epochs}"]
    proc = subprocess.Popen(_command(exp, shapes, *args), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    log = exp / "logs" / "log.txt"
    deadline = time.time() + 400
    try:
        while time.time() < deadline and proc.poll() is None:
            if log.is_file() and "Train Epoch: [1]" in log.read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed mid-epoch"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    killed_at = _ckpt(exp)  # the last checkpoint is intact (upstream writes .tmp then moves it)
    assert killed_at["steps"]["train"] < epochs * TRAIN_IMAGES

    _train(exp, shapes, *args)
    final = _ckpt(exp)
    assert final["steps"]["train"] == epochs * TRAIN_IMAGES and final["epoch"] == epochs
    assert "Resuming training from" in log.read_text()
