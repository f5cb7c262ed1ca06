"""Segmentation heads end to end on the synthetic shapes data with a tiny frozen ViT:
frozen backbone, exact resume, cached features, input checks, CLI, DDP (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_synthetic_dataset import DatasetSpec, make_dataset  # noqa: E402

from sam2_vitplug.cli import main  # noqa: E402
from sam2_vitplug.heads.data import write_class_masks_from_coco  # noqa: E402
from sam2_vitplug.heads.model import SegModelConfig, build_seg_model, read_checkpoint  # noqa: E402
from sam2_vitplug.heads.train import TrainConfig, train  # noqa: E402

NUM_CLASSES = 5  # background + 4 shapes
M2F_TINY = ["head.num_queries=6", "head.hidden_dim=16", "head.mask_dim=16", "head.heads=2", "head.ffn_dim=32",
            "head.dec_layers=3"]
HEAD_OPTS = {"linear": [], "upernet": ["head.channels=16"], "mask2former": M2F_TINY}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("seg_shapes")
    make_dataset(root / "ds", DatasetSpec(train=8, val=4, image_size=64, seed=3))
    for split in ("train", "val"):
        write_class_masks_from_coco(root / "ds" / split / "annotations.json", root / "masks" / split)
    return {f"{split}_{kind}": str(root / sub / split / pat)
            for split in ("train", "val") for kind, sub, pat in (("images", "ds", "images/*.jpg"),
                                                                 ("masks", "masks", "*.png"))} | {"root": str(root)}


def _configs(tiny_models, shapes, tmp_path, head="linear", **train_kw):
    model_cfg = SegModelConfig(head=head, encoder=str(tiny_models["dinov2"]), num_classes=NUM_CLASSES, image_size=64,
                               head_overrides=HEAD_OPTS[head])
    cfg = TrainConfig(image_paths=shapes["train_images"], mask_paths=shapes["train_masks"],
                      val_image_paths=shapes["val_images"], val_mask_paths=shapes["val_masks"],
                      checkpoint_dir=str(tmp_path / "ck"), epochs=2, warmup_epochs=1, batch_size=4, num_workers=0,
                      lr=1e-3, progress=False, device="cpu")
    return model_cfg, replace(cfg, **train_kw)


def test_class_masks_from_coco(shapes):
    masks = sorted(Path(shapes["train_masks"]).parent.glob("*.png"))
    values = np.unique(np.concatenate([np.asarray(Image.open(p)).ravel() for p in masks]))
    assert len(masks) == 8 and set(values.tolist()) <= set(range(NUM_CLASSES)) and len(values) > 2


@pytest.mark.parametrize("head", ["linear", "upernet", "mask2former"])
def test_model_shapes_and_frozen_backbone_after_training(tiny_models, shapes, tmp_path, head):
    model_cfg, cfg = _configs(tiny_models, shapes, tmp_path, head, epochs=1, warmup_epochs=0)
    torch.manual_seed(0)
    model = build_seg_model(model_cfg)
    x = torch.randn(2, 3, 64, 96)  # non-square, multiple of 16
    scores = model.scores(model(x), (64, 96))
    assert scores.shape == (2, NUM_CLASSES, 64, 96)
    assert not any(p.requires_grad for p in model.trunk.vit.parameters())
    assert any(p.requires_grad for p in model.trunk.pyramid.parameters()) == (head != "linear")
    train(model_cfg, cfg)
    ckpt = read_checkpoint(tmp_path / "ck" / "last.pt")
    assert not any(k.startswith("trunk.vit.") for k in ckpt["model"])  # frozen weights are not copied
    from sam2_vitplug.encoders import load_encoder

    reference = load_encoder(str(tiny_models["dinov2"])).model.state_dict()
    trained = build_seg_model(model_cfg)
    trained.load_state_dict(ckpt["model"], strict=False)
    for name, value in trained.trunk.vit.state_dict().items():
        assert torch.equal(value, reference[name]), name
    torch.manual_seed(cfg.seed)  # train() seeds the same way before building: the initial head
    initial = build_seg_model(model_cfg).head.state_dict()
    changed = [k for k, v in initial.items() if v.dtype.is_floating_point and not torch.equal(v, ckpt["model"][f"head.{k}"])]
    assert changed, "training did not update the head"


def test_backbone_has_no_graph_and_stays_in_eval(tiny_models, shapes, tmp_path):
    model_cfg, _ = _configs(tiny_models, shapes, tmp_path, "upernet")
    model = build_seg_model(model_cfg).train()
    assert not model.trunk.vit.training and model.head.training
    maps = model.vit_features(torch.randn(1, 3, 64, 64))
    assert all(m.grad_fn is None and not m.requires_grad for m in maps)
    model.loss(model(torch.randn(1, 3, 64, 64)), torch.zeros(1, 64, 64, dtype=torch.long)).backward()
    assert all(p.grad is None for p in model.trunk.vit.parameters())


@pytest.mark.parametrize("head", ["linear", "mask2former"])
def test_rerun_after_interrupt_resumes_and_equals_uninterrupted_run(tiny_models, shapes, tmp_path, head, monkeypatch):
    # with augmentation, so the data order and the augmentation draws must be replayed too
    import sam2_vitplug.heads.train as train_module

    model_cfg, cfg = _configs(tiny_models, shapes, tmp_path / "full", head, epochs=2, warmup_epochs=1, augment=True,
                              save_interval=1)
    train(model_cfg, cfg)
    full_dir = tmp_path / "full" / "ck"
    full = read_checkpoint(full_dir / "last.pt")
    # a Ctrl-C right after the first epoch was saved, then the very same call again
    _, again = _configs(tiny_models, shapes, tmp_path / "resumed", head, epochs=2, warmup_epochs=1, augment=True,
                        save_interval=1)
    plot = train_module.plot_history

    def interrupted(history, path):
        plot(history, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "plot_history", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(model_cfg, again)
    resumed_dir = tmp_path / "resumed" / "ck"
    assert read_checkpoint(resumed_dir / "last.pt")["epoch"] == 1 and not (resumed_dir / "train.lock").exists()
    monkeypatch.setattr(train_module, "plot_history", plot)
    train(model_cfg, again)
    resumed = read_checkpoint(resumed_dir / "last.pt")
    assert resumed["epoch"] == full["epoch"] == 2
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key  # deterministic CPU run: bit-exact
    assert resumed["optimizer"]["state"].keys() == full["optimizer"]["state"].keys()
    for idx, state in full["optimizer"]["state"].items():
        assert all(torch.equal(v, resumed["optimizer"]["state"][idx][k]) for k, v in state.items())
    assert resumed["scheduler"] == full["scheduler"] and resumed["best_miou"] == full["best_miou"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]
    assert (resumed_dir / "curves.png").is_file() and len(json.loads((resumed_dir / "history.json").read_text())) == 2
    # epoch_N.pt / best.pt hold what inference needs, not the optimizer (2x the head for AdamW)
    epoch1 = read_checkpoint(full_dir / "epoch_0001.pt")
    assert "optimizer" not in epoch1 and "scheduler" not in epoch1 and epoch1["epoch"] == 1
    assert (full_dir / "epoch_0002.pt").stat().st_size < (full_dir / "last.pt").stat().st_size
    with pytest.raises(ValueError, match="holds only what inference needs.*last.pt"):
        train(model_cfg, replace(again, resume_checkpoint=str(full_dir / "epoch_0001.pt"),
                                 checkpoint_dir=str(tmp_path / "other")))
    assert not (tmp_path / "other").exists()


def test_cached_features_train_the_same_head(tiny_models, shapes, tmp_path):
    model_cfg, cfg = _configs(tiny_models, shapes, tmp_path / "a", "linear")
    train(model_cfg, cfg)
    _, cached = _configs(tiny_models, shapes, tmp_path / "b", "linear", cache_features=True)
    train(model_cfg, cached)
    assert len(list((tmp_path / "b" / "ck" / "feature_cache").glob("*.pt"))) == 2  # train + val
    a = read_checkpoint(tmp_path / "a" / "ck" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "b" / "ck" / "last.pt")["model"]
    for key in a:
        if key.startswith("head."):
            # same features up to BLAS batch-composition effects (the cache runs other batches)
            assert torch.allclose(a[key].float(), b[key].float(), atol=1e-4), key
    with pytest.raises(ValueError, match="augment"):
        train(model_cfg, replace(cached, augment=True))


def test_bad_input_fails_before_anything_is_written(tiny_models, shapes, tmp_path):
    model_cfg, cfg = _configs(tiny_models, shapes, tmp_path, "linear")
    small = replace(model_cfg, num_classes=3)
    with pytest.raises(ValueError, match=r"mask '.*\.png' holds class id [34] but --num-classes is 3"):
        train(small, cfg)
    with pytest.raises(FileNotFoundError, match="matched no files"):
        train(model_cfg, replace(cfg, image_paths=str(tmp_path / "none" / "*.jpg")))
    with pytest.raises(ValueError, match="8 images but 4 masks"):
        train(model_cfg, replace(cfg, mask_paths=shapes["val_masks"]))
    assert not (tmp_path / "ck").exists()


def _write_video(path: Path, frames: int = 3) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (80, 48))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
    writer.release()


def test_cli_train_eval_predict(tiny_models, shapes, tmp_path, capsys):
    ck = tmp_path / "ck"
    args = ["seg", "train", "--head", "upernet", "--encoder", str(tiny_models["dinov2"]), "--num-classes", "5",
            "--image-paths", shapes["train_images"], "--mask-paths", shapes["train_masks"], "--image-size", "64",
            "--batch-size", "4", "--epochs", "2", "--warmup-epochs", "1", "--num-workers", "0", "--validate",
            "--save-interval", "1", "--checkpoint-dir", str(ck), "--head-opt", "head.channels=16", "--no-progress",
            "--device", "cpu", "--class-names", "bg,circle,square,triangle,star"]
    assert main(args) == 0
    assert {"best.pt", "last.pt", "epoch_0001.pt", "epoch_0002.pt", "curves.png", "history.json"} <= {
        p.name for p in ck.iterdir()}
    epoch = json.loads((ck / "metrics" / "epoch_0002.json").read_text())
    assert 0 <= epoch["mIoU"] <= 1 and set(epoch["per_class_iou"]) == {"bg", "circle", "square", "triangle", "star"}

    out = tmp_path / "eval.json"
    assert main(["seg", "eval", "--checkpoint", str(ck / "best.pt"), "--image-paths", shapes["val_images"],
                 "--mask-paths", shapes["val_masks"], "--mode", "slide", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 4 and np.array(result["confusion"]).sum() == 4 * 64 * 64

    image = Path(shapes["val_images"]).parent / "000001.jpg"
    assert main(["seg", "predict", "--checkpoint", str(ck / "best.pt"), "--input", str(image), "--out",
                 str(tmp_path / "p1"), "--no-progress", "--device", "cpu"]) == 0
    mask = np.asarray(Image.open(tmp_path / "p1" / "000001_mask.png"))
    assert mask.shape == (64, 64) and mask.max() < 5
    assert Image.open(tmp_path / "p1" / "000001_overlay.png").size[0] > 64  # legend on the right
    assert json.loads((tmp_path / "p1" / "predict.json").read_text())["fps"] > 0

    video = tmp_path / "clip.mp4"
    _write_video(video)
    assert main(["seg", "predict", "--checkpoint", str(ck / "best.pt"), "--input", str(video), "--out",
                 str(tmp_path / "p2"), "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "p2" / "predict.json").read_text())
    assert report["frames"] == 3 and Path(report["output"]).stat().st_size > 0
    assert "FPS" in capsys.readouterr().out

    assert main(["seg", "predict", "--checkpoint", str(ck / "nope.pt"), "--input", str(image), "--out",
                 str(tmp_path / "p3")]) == 2
    assert not (tmp_path / "p3").exists()


@pytest.mark.slow
def test_ddp_gloo_two_processes_match_one_process(tiny_models, shapes, tmp_path):
    """2 CPU processes with batch 2 each == 1 process with batch 4 (UPerNet has GroupNorm,
    so per-rank statistics do not matter; the gradients are averaged over equal halves)."""
    common = ["--head", "upernet", "--encoder", str(tiny_models["dinov2"]), "--num-classes", "5",
              "--image-paths", shapes["train_images"], "--mask-paths", shapes["train_masks"], "--image-size", "64",
              "--epochs", "2", "--warmup-epochs", "1", "--num-workers", "0", "--head-opt", "head.channels=16",
              "--no-progress", "--device", "cpu", "--lr", "1e-3"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "sam2_vitplug.cli", "seg", "train"]
    done = subprocess.run(torchrun + common + ["--batch-size", "2", "--checkpoint-dir", str(tmp_path / "ddp")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["seg", "train", *common, "--batch-size", "4", "--checkpoint-dir", str(tmp_path / "one")]) == 0
    a = read_checkpoint(tmp_path / "ddp" / "last.pt")
    b = read_checkpoint(tmp_path / "one" / "last.pt")
    for key, value in b["model"].items():
        # float32 all-reduce of two half-batch means vs one full-batch mean: rounding only
        assert torch.allclose(a["model"][key], value, atol=1e-5), key
    assert a["history"][-1]["train_loss"] == pytest.approx(b["history"][-1]["train_loss"], rel=1e-5)
