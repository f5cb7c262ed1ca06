"""training_ext helpers and tools: SA-1B layout + overlay, loss logs -> PNG, point IoU, the
learning check and the training benchmark (the last two are slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from make_synthetic_dataset import DatasetSpec, add_sa1b_layout, make_dataset  # noqa: E402


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tools_data") / "shapes", DatasetSpec(train=3, val=2, image_size=64))


def test_sa1b_layout_feeds_upstream_sa1b_dataset_via_overlay(small_data):
    from hydra.utils import instantiate
    from pycocotools import mask as mask_utils

    from training_ext.compose import LaunchRequest, compose_training_config

    add_sa1b_layout(small_data)
    folder = small_data / "train" / "sa1b"
    assert sorted(p.name for p in folder.iterdir()) == [f"sa_{i}.{e}" for i in (1, 2, 3) for e in ("jpg", "json")]
    cfg = compose_training_config(LaunchRequest(
        config="configs/training/image_sa1b_finetune.yaml", device="cpu",
        overrides=[f"dataset.img_folder={folder}", f"dataset.gt_folder={folder}"]))
    raw = instantiate(cfg.trainer.data.train.datasets[0].dataset.datasets[0].video_dataset)
    video, loader = raw.get_video(raw.video_names.index("sa_2"))
    coco = json.loads((small_data / "train" / "annotations.json").read_text())
    expected = [a for a in coco["annotations"] if a["image_id"] == 2]
    masks = loader.load(0)
    assert video.video_id == 2 and len(masks) == len(expected)
    first = masks[0].numpy() if hasattr(masks[0], "numpy") else np.asarray(masks[0])
    assert np.array_equal(first.astype(bool), mask_utils.decode(expected[0]["segmentation"]).astype(bool))


def test_sa1b_option_leaves_other_outputs_unchanged(tmp_path):
    spec = ["--train", "2", "--val", "1", "--image-size", "64"]
    run = lambda *a: subprocess.run([sys.executable, str(REPO / "tools" / "make_synthetic_dataset.py"), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120, check=True)
    run("--out", str(tmp_path / "plain"), *spec)
    run("--out", str(tmp_path / "sa"), "--sa1b", *spec)
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    plain, with_sa = files(tmp_path / "plain"), files(tmp_path / "sa")
    assert {k: v for k, v in with_sa.items() if "/sa1b/" not in k} == plain
    assert any("/sa1b/" in k for k in with_sa)


def test_loss_logs_to_png(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from training_ext.logs import LOSS_TAG, read_scalars

    writer = SummaryWriter(str(tmp_path / "run" / "tensorboard"))
    for step in range(20):
        writer.add_scalar(LOSS_TAG, 100.0 / (step + 1), global_step=step, new_style=True)  # as upstream logs it
    writer.close()
    curve = read_scalars(tmp_path / "run")[LOSS_TAG]
    assert [s for s, _ in curve] == list(range(20)) and curve[3][1] == pytest.approx(25.0)
    out = tmp_path / "plots" / "loss.png"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "plot_training.py"), str(tmp_path / "run"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (520, 900, 3) and (image != 255).any(axis=2).mean() > 0.01  # something was drawn
    assert json.loads(out.with_suffix(".json").read_text())["curves"]["run"][0] == [0, 100.0]
    with pytest.raises(FileNotFoundError, match="no tensorboard event files"):
        read_scalars(tmp_path / "plots")


def test_click_point_is_inside_and_deepest():
    from training_ext.point_eval import click_point

    mask = np.zeros((20, 30), bool)
    mask[4:15, 10:21] = True  # 11 x 11 square: the only pixel 6 px from the background is its centre
    assert click_point(mask) == (15, 9)
    mask[:, :] = False
    mask[2:5, 1:4] = True  # a second, smaller blob does not move the click
    mask[4:15, 10:21] = True
    assert click_point(mask) == (15, 9)


@pytest.mark.slow
def test_point_iou_of_a_tiny_model_is_a_fraction(small_data, tiny_models):
    from conftest import tiny_overrides

    from sam2_vitplug.build import build_sam2_vit
    from training_ext.point_eval import load_split, point_prompt_iou

    model = build_sam2_vit("sam2_vit_dino_s.yaml", device="cpu", hydra_overrides_extra=tiny_overrides(
        tiny_models["dinov2"], image_size=64))
    result = point_prompt_iou(model, load_split(small_data / "val"))
    assert result.images == 2 and result.instances >= 2 and 0.0 <= result.mean_iou <= 1.0


@pytest.mark.slow
def test_train_check_improves(tmp_path):
    """The learning check itself (minutes): both modes must gain the tool's threshold."""
    out = tmp_path / "train_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train_check.py"), "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=900)
    report = json.loads(out.read_text())
    assert proc.returncode == 0 and report["passed"], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {r["mode"] for r in report["rows"]} == {"unfrozen", "frozen"}


@pytest.mark.slow
def test_bench_train_small(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench_train.py"), "--out", str(out), "--device", "cpu",
                           "--image-size", "64", "--steps", "1"], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["cell"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"vit_unfrozen", "vit_frozen", "hiera_t"}
    # freezing keeps no ViT activations for backward: strictly less saved memory, fewer trainable params
    assert rows["vit_frozen"]["saved_for_backward_mib"] < rows["vit_unfrozen"]["saved_for_backward_mib"]
    assert rows["vit_frozen"]["trainable_m"] < rows["vit_unfrozen"]["trainable_m"]


def test_train_check_initial_model_follows_its_seed(tmp_path):
    """``--seed`` reaches the SAM2 head initialisation: the build seeds its own forked RNG
    (``init_seed``), so a global ``torch.manual_seed`` before it changed nothing."""
    import torch
    import train_check as tc

    vit = tc._tiny_vit(tmp_path / "vit", 0, hidden=32, layers=1, heads=2)
    states = [tc._initial_model(vit, tmp_path / f"init{seed}.pt", seed, 64, "32,32,16,8").state_dict()
              for seed in (0, 0, 1)]
    name = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(states[0][name], states[1][name])
    assert not torch.equal(states[0][name], states[2][name])
    # the trunk's ViT comes from the saved encoder, whatever the seed
    vit_name = "image_encoder.trunk.vit.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(states[0][vit_name], states[2][vit_name])
