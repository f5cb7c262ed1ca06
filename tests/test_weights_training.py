"""training_ext starts from the weights it is given: ``--sam2-ckpt`` for a Hiera and a ViT trunk
and ``--init-ckpt``, each compared tensor by tensor with its source.

How the initial weights are observed: the run trains with ``scratch.base_lr=0`` and
``scratch.vision_lr=0``, so upstream's AdamW steps change no tensor (lr 0 makes both the update
and the decoupled weight decay exact no-ops) and the ``checkpoint.pt`` the upstream Trainer
writes holds exactly the weights it started from. Sources are made under ``SOURCE_SEED``,
which no code under test uses, so a skipped load would leave different tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_OUT_DIMS, _tiny_configs
from sam2.build_sam import build_sam2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from make_synthetic_dataset import DatasetSpec, make_dataset  # noqa: E402

SOURCE_SEED = 4321
TRUNK_PREFIXES = ("image_encoder.trunk.", "image_encoder.neck.convs.")
FROZEN_LR = ["scratch.base_lr=0.0", "scratch.vision_lr=0.0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("wt_data") / "shapes", DatasetSpec(train=1, val=1, image_size=128, seed=2))


@pytest.fixture(scope="module")
def hiera_s(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Official SAM 2.1 layout of a random Hiera-S (the twin of the tiny_cpu ViT option)."""
    torch.manual_seed(SOURCE_SEED)
    state = build_sam2("configs/sam2.1/sam2.1_hiera_s.yaml", ckpt_path=None, device="cpu").state_dict()
    path = tmp_path_factory.mktemp("wt_ckpt") / "sam2.1_hiera_small.pt"
    torch.save({"model": state}, path)
    return path, state


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    import transformers as T

    torch.manual_seed(SOURCE_SEED)
    model = T.AutoModel.from_config(_tiny_configs()["dinov2"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("wt_vit") / "dinov2"
    model.save_pretrained(path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def _train(exp: Path, data: Path, *args: str) -> dict[str, torch.Tensor]:
    command = [sys.executable, "-m", "training_ext.train", "--config", "configs/training/tiny_cpu.yaml",
               "--device", "cpu", "--experiment-dir", str(exp), *args, *FROZEN_LR, f"dataset.root={data}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = torch.load(exp / "checkpoints" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["steps"]["train"] >= 1, "the trainer took no step"
    return ckpt["model"]


def _assert_equal(model: dict, source: dict, names) -> None:
    names = list(names)
    assert names
    bad = [n for n in names if not torch.equal(model[n], source[n])]
    assert not bad, f"{len(bad)} tensors differ from the source, e.g. {bad[:5]}"


def _vit_args(vit_dir: Path) -> list[str]:
    return ["--encoder-type", "dino", "--encoder-ckpt", str(vit_dir),
            "--encoder-out-dims", ",".join(map(str, TINY_OUT_DIMS))]


def test_hiera_trunk_starts_from_the_whole_official_checkpoint(data, hiera_s, tmp_path):
    path, source = hiera_s
    model = _train(tmp_path / "hiera", data, "--encoder-type", "hiera", "--sam2-ckpt", str(path))
    assert sorted(model) == sorted(source)
    _assert_equal(model, source, source)


def test_vit_trunk_takes_the_checkpoint_around_its_pretrained_vit_then_init_ckpt_takes_everything(
        data, hiera_s, tiny_vit, tmp_path):
    path, source = hiera_s
    vit_dir, vit_source = tiny_vit
    model = _train(tmp_path / "vit", data, *_vit_args(vit_dir), "--sam2-ckpt", str(path))
    _assert_equal(model, source, [k for k in source if not k.startswith(TRUNK_PREFIXES)])
    prefix = "image_encoder.trunk.vit."
    _assert_equal({k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}, vit_source, vit_source)

    # --init-ckpt: every tensor of a checkpoint of this very model, the trunk included
    gen = torch.Generator().manual_seed(SOURCE_SEED)
    own = {k: (v + torch.randn(v.shape, generator=gen) if v.is_floating_point() else v) for k, v in model.items()}
    torch.save({"model": own}, tmp_path / "own.pt")
    again = _train(tmp_path / "init", data, *_vit_args(vit_dir), "--init-ckpt", str(tmp_path / "own.pt"))
    assert sorted(again) == sorted(own)
    _assert_equal(again, own, own)
