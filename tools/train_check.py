#!/usr/bin/env python
"""Learning check: does a tiny ViT-trunk SAM2 learn through training_ext + upstream Trainer on CPU?

Builds a random-init tiny DINOv2-architecture trunk (hidden 64, 4 blocks) SAM2 at 128 px, saves
that initial model, measures single-click mask IoU on held-out synthetic images, trains it with
``python -m training_ext.train`` (the real launch path: CPUTrainer, upstream loss and data
pipeline) for a wall-clock budget per mode, and measures again from the last checkpoint.
Modes: ``unfrozen`` (everything trains) and ``frozen`` (``--freeze-vit``: pyramid, neck and
heads train). The run passes when IoU rises by at least ``--threshold`` in every mode.
No pretrained weights are involved; the numbers say nothing about real-image accuracy.

The reported IoU uses the mask the model itself picks (highest predicted IoU of its 3 single-click
masks, what a user gets); the best of the 3 by true IoU is reported as a secondary number.
Recipe (80 s per mode comparisons, see docs/benchmarks.md, Training): AdamW at ``--lr 3e-4`` (heads, neck, decoder)
and ``--vision-lr 1e-4`` (image encoder). Random init does not want a higher LR here: 3e-3
collapsed the masks towards background, 1e-3 (the earlier default) and 1.5e-4 learned slower.
The IoU-prediction loss weight is 20 (upstream 1, next to 20 for the focal mask loss): at lower
weights the masks improved but the IoU head kept picking a poor one of the 3. Clicks only (no
boxes), one correction click per step. The training process runs torch with one intra-op thread
(``--threads``): on the shared 2-core box that gives more steps than torch's default when quiet,
and it does not collapse to a few steps a minute when other jobs compete for the cores.

    python tools/train_check.py --out results/train_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

OUT_DIMS = "64,64,32,16"


def _tiny_vit(path: Path, seed: int, hidden: int = 64, layers: int = 4, heads: int = 4) -> Path:
    """A random-init DINOv2-architecture ViT (patch 14, MLP ratio 4) saved with save_pretrained."""
    import torch
    import transformers as T

    if not (path / "config.json").is_file():
        torch.manual_seed(seed)
        config = T.Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                patch_size=14, image_size=518)
        T.AutoModel.from_config(config).save_pretrained(path)
    return path


def _trunk_overrides(vit: Path, image_size: int, out_dims: str = OUT_DIMS) -> list[str]:
    return [f"++model.image_encoder.trunk.pretrained={vit}", "++model.image_encoder.trunk.encoder_type=dino",
            f"++model.image_encoder.trunk.out_dims=[{out_dims}]", f"++model.image_size={image_size}"]


def _initial_model(vit: Path, out: Path, seed: int, image_size: int, out_dims: str = OUT_DIMS):
    import torch

    from sam2_vitplug.build import build_sam2_vit

    # the build initialises under its own forked RNG seeded with init_seed (a global
    # torch.manual_seed here would not reach it), so --seed is passed to it
    model = build_sam2_vit("sam2_vit_dino_s.yaml", device="cpu", init_seed=seed,
                           hydra_overrides_extra=_trunk_overrides(vit, image_size, out_dims))
    tmp = out.with_suffix(".tmp")
    torch.save({"model": model.state_dict()}, tmp)
    os.replace(tmp, out)
    return model


def _train(mode: str, work: Path, data: Path, vit: Path, init: Path, budget_s: float, args) -> dict:
    """Run training_ext until ``budget_s`` seconds have passed (or ``args.epochs`` epochs, when the
    namespace has them), then SIGKILL it: the last per-phase checkpoint is what gets evaluated
    (upstream saves it atomically)."""
    exp = work / f"run_{mode}"
    out_dims = getattr(args, "out_dims", OUT_DIMS)
    cmd = [sys.executable, "-m", "training_ext.train", "--config", "configs/training/tiny_cpu.yaml",
           "--device", args.device, "--encoder-type", "dino", "--encoder-ckpt", str(vit), "--encoder-out-dims", out_dims,
           "--init-ckpt", str(init), "--experiment-dir", str(exp), f"dataset.root={data}",
           f"scratch.resolution={args.image_size}",
           f"scratch.num_epochs={getattr(args, 'epochs', 1000)}", f"scratch.phases_per_epoch={args.phases}", f"scratch.base_lr={args.lr}",
           f"scratch.vision_lr={args.vision_lr}", "scratch.log_freq=10", f"scratch.max_num_objects={args.objects}",
           # train on what is measured: a positive click, no boxes, one correction click (0 trips an
           # upstream UnboundLocalError in SAM2Train._iter_correct_pt_sampling); fewer decoder passes per step
           "trainer.model.prob_to_use_pt_input_for_train=1.0", "trainer.model.prob_to_use_box_input_for_train=0.0",
           "trainer.model.num_correction_pt_per_frame=1", "trainer.model.prob_to_sample_from_gt_for_train=0.0",
           f"trainer.loss.all.weight_dict.loss_iou={args.iou_weight}", *args.override]
    if mode == "frozen":
        cmd.append("--freeze-vit")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    if args.threads > 0:  # intra-op threads; 1 keeps a shared CPU box from thrashing (see --threads)
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    log = open(work / f"run_{mode}.log", "w")
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    from tqdm import tqdm

    with tqdm(total=int(budget_s), desc=f"train {mode}", unit="s") as bar:
        while proc.poll() is None and time.time() - start < budget_s:
            time.sleep(1)
            bar.n = min(int(time.time() - start), int(budget_s))
            bar.refresh()
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()
    ckpt = exp / "checkpoints" / "checkpoint.pt"
    if not ckpt.is_file():
        tail = (work / f"run_{mode}.log").read_text()[-2000:]
        raise RuntimeError(f"{mode}: no checkpoint after {budget_s:.0f} s (raise --budget-s?); log tail:\n{tail}")
    return {"exp": exp, "ckpt": ckpt, "wall_s": time.time() - start}


def _evaluate_run(run: dict, val):
    import torch
    import yaml
    from sam2.build_sam import build_sam2

    from training_ext.point_eval import point_prompt_iou

    record = yaml.safe_load((run["exp"] / "config.yaml").read_text())["vitplug_train"]["build_sam2"]
    model = build_sam2(record["config"], ckpt_path=str(run["ckpt"]), device="cpu",
                       hydra_overrides_extra=record["overrides"])
    steps = torch.load(run["ckpt"], map_location="cpu", weights_only=True)["steps"]["train"]
    return point_prompt_iou(model, val), steps


def main(argv: list[str] | None = None) -> int:
    from sam2_vitplug.devices import default_device

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/train_check.json", help="JSON report path")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--device", default="cpu", help="cpu (the check's setting) or cuda; default cpu")
    parser.add_argument("--modes", default="unfrozen,frozen", help="comma list of unfrozen, frozen")
    parser.add_argument("--budget-s", type=float, default=250.0, help="training wall-clock seconds per mode")
    parser.add_argument("--image-size", type=int, default=128, help="image size (multiple of 16, >= 64)")
    parser.add_argument("--objects", type=int, default=4, help="objects supervised per image and step")
    parser.add_argument("--train", type=int, default=96, help="training images")
    parser.add_argument("--val", type=int, default=16, help="held-out images")
    parser.add_argument("--phases", type=int, default=4, help="checkpoints per pass over the training images")
    parser.add_argument("--lr", type=float, default=3e-4, help="scratch.base_lr")
    parser.add_argument("--vision-lr", type=float, default=1e-4, help="scratch.vision_lr (image encoder)")
    parser.add_argument("--iou-weight", type=float, default=20.0,
                        help="IoU-prediction loss weight (upstream 1; see the module docstring)")
    parser.add_argument("--override", action="append", default=[], help="extra training_ext override (repeatable)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of the training process (0: torch's default)")
    parser.add_argument("--threshold", type=float, default=0.10, help="required absolute IoU gain per mode")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("unfrozen", "frozen") for m in modes):
        parser.error(f"--modes must list unfrozen and/or frozen, got {args.modes!r}")
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda (upstream Trainer), got {args.device!r}; default {default_device()}")
    if args.image_size % 16 or args.image_size < 64:
        parser.error(f"--image-size must be a multiple of 16 and >= 64, got {args.image_size}")
    if args.budget_s <= 0 or args.train < 1 or args.val < 1 or args.objects < 1:
        parser.error("--budget-s, --train and --val must be positive")
    os.environ["HF_HUB_OFFLINE"] = "1"
    t0 = time.time()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="train_check_"))
    work.mkdir(parents=True, exist_ok=True)

    from make_synthetic_dataset import DatasetSpec, make_dataset

    from training_ext.point_eval import load_split, point_prompt_iou

    data = work / "data"
    if not (data / "dataset_info.json").is_file():
        make_dataset(data, DatasetSpec(train=args.train, val=args.val, image_size=args.image_size, seed=args.seed),
                     overwrite=True)
    val = load_split(data / "val")
    vit = _tiny_vit(work / "tiny_vit", args.seed)
    init = work / "init.pt"
    before = point_prompt_iou(_initial_model(vit, init, args.seed, args.image_size), val)
    print(f"before training: point IoU {before.mean_iou:.3f} over {before.instances} instances")
    rows = []
    for mode in modes:
        run = _train(mode, work, data, vit, init, args.budget_s, args)
        after, steps = _evaluate_run(run, val)
        gain = after.mean_iou - before.mean_iou
        rows.append({"mode": mode, "steps": steps, "train_wall_s": round(run["wall_s"], 1),
                     "iou_before": before.mean_iou, "iou_after": after.mean_iou, "gain": gain,
                     "oracle_iou_before": before.oracle_iou, "oracle_iou_after": after.oracle_iou,
                     "passed": gain >= args.threshold})
        print(f"{mode}: {steps} steps in {run['wall_s']:.0f} s, IoU {before.mean_iou:.3f} -> {after.mean_iou:.3f}")
    report = {
        "what": f"single-click mask IoU on held-out synthetic shapes, tiny random-init DINOv2-arch trunk, "
                f"{args.image_size} px",
        "threshold": args.threshold, "device": args.device, "cpu_count": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(), "instances": before.instances, "val_images": before.images,
        "train_images": args.train, "image_size": args.image_size, "objects": args.objects, "budget_s": args.budget_s, "lr": args.lr, "vision_lr": args.vision_lr,
        "iou_weight": args.iou_weight, "threads": args.threads, "overrides": args.override,
        "total_wall_s": round(time.time() - t0, 1), "rows": rows, "passed": all(r["passed"] for r in rows),
    }
    print("\nmode      steps  train s  IoU before  IoU after   gain  pass  (best-of-3 IoU before -> after)")
    for r in rows:
        print(f"{r['mode']:<9} {r['steps']:>5} {r['train_wall_s']:>8.0f} {r['iou_before']:>11.3f} {r['iou_after']:>10.3f}"
              f" {r['gain']:>6.3f}  {'yes' if r['passed'] else 'NO ':<4}  ({r['oracle_iou_before']:.3f} -> "
              f"{r['oracle_iou_after']:.3f})")
    print(f"threshold {args.threshold}, total {report['total_wall_s']:.0f} s, load average {report['load_avg_at_end']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
