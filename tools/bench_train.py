#!/usr/bin/env python
"""One SAM2 training step (upstream SAM2Train forward + upstream loss + backward + AdamW step) at a
fixed small size: ViT trunk unfrozen vs ``--freeze-vit`` vs upstream Hiera-T, in one process.

Memory is measured two ways: the bytes autograd saves for backward during the forward
(``torch.autograd.graph.saved_tensors_hooks``, unique storages, parameters excluded): this is
the activation memory freezing is meant to cut, exact and independent of the allocator; and on
CUDA also ``torch.cuda.max_memory_allocated`` over the step. Times are medians of ``--steps``
steps after one warm-up step. Models use random weights (``random_init``); the batch comes from
the real data pipeline of ``configs/training/tiny_cpu.yaml`` on synthetic shapes.

    python tools/bench_train.py --out results/bench_train.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

CELLS = {
    # name -> (encoder flags, extra overrides)
    "vit_unfrozen": ({"encoder_ckpt": "dinov2_small", "encoder_out_dims": "384,384,192,96"},
                     ["++model.image_encoder.trunk.random_init=true"]),
    "vit_frozen": ({"encoder_ckpt": "dinov2_small", "encoder_out_dims": "384,384,192,96", "freeze_vit": True},
                   ["++model.image_encoder.trunk.random_init=true"]),
    "hiera_t": ({"encoder_type": "hiera"}, ["training/model@model=hiera_t"]),
}


def _batch(cfg, device):
    import torch.distributed as dist
    from hydra.utils import instantiate

    if not dist.is_initialized():  # upstream's loader uses a DistributedSampler: a 1-process gloo group
        dist.init_process_group("gloo", init_method=f"file://{tempfile.mkdtemp()}/pg", rank=0, world_size=1)

    loader = instantiate(cfg.trainer.data.train).get_loader(epoch=0)
    return next(iter(loader)).to(device)


def _saved_bytes_hooks(params: set[int]):
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params:
            seen[ptr] = storage.nbytes()
        return t

    return seen, pack, lambda t: t


def _run_cell(name: str, flags: dict, extra: list[str], data: Path, args) -> dict:
    import numpy as np
    import torch
    from hydra.utils import instantiate

    from benchlib import median, timed
    from benchmem import MemProbe

    from training_ext.compose import LaunchRequest, compose_training_config
    from training_ext.flags import EncoderFlags

    device = torch.device(args.device)
    overrides = [f"dataset.root={data}", f"scratch.resolution={args.image_size}",
                 f"scratch.train_batch_size={args.batch}", "scratch.max_num_objects=2", *extra]
    cfg = compose_training_config(LaunchRequest(config="configs/training/tiny_cpu.yaml", overrides=overrides,
                                                flags=EncoderFlags(**flags), device=args.device))
    torch.manual_seed(0)
    model = instantiate(cfg.trainer.model, _convert_="all").to(device).train()
    loss_fn = instantiate(cfg.trainer.loss.all, _convert_="all")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=1e-5)
    batch = _batch(cfg, device)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    probe = MemProbe(device, enabled=device.type == "cuda")  # CPU: the saved bytes are the measure
    times, saved, peaks = [], [], []
    for step in range(args.steps + 1):
        torch.manual_seed(step)  # same prompts sampled in every cell
        np.random.seed(step)
        seen, pack, unpack = _saved_bytes_hooks(params)

        def train_step() -> None:
            optim.zero_grad(set_to_none=True)
            with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
                losses = loss_fn(model(batch), batch.masks)
            losses["core_loss"].backward()
            optim.step()

        probe.start()
        _, wall, _ = timed(train_step, device)
        peak = probe.stop().get("peak_mib")
        if step:  # step 0 is the warm-up
            times.append(wall)
            saved.append(sum(seen.values()) / 2**20)
            if peak is not None:
                peaks.append(peak)
    return {
        "cell": name, "s_per_step": median(times), "saved_for_backward_mib": median(saved),
        "cuda_peak_mib": median(peaks),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_m": sum(p.numel() for p in trainable) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    from sam2_vitplug.devices import default_device

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/bench_train.json", help="JSON output path")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: the best available)")
    parser.add_argument("--image-size", type=int, default=256, help="image size (multiple of 16)")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per cell (after 1 warm-up)")
    parser.add_argument("--cells", default=",".join(CELLS), help=f"comma list of {', '.join(CELLS)}")
    args = parser.parse_args(argv)
    args.device = args.device or default_device()
    if args.device not in ("cuda", "cpu"):
        parser.error(f"--device must be cuda or cpu (upstream SAM2Train), got {args.device}")
    if args.image_size % 16 or args.image_size < 64 or args.steps < 1 or args.batch < 1:
        parser.error("--image-size must be a multiple of 16 >= 64; --steps and --batch >= 1")
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        parser.error(f"unknown cells {unknown}; choose from {list(CELLS)}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from tqdm import tqdm

    from benchlib import fmt, loadavg, machine_info, print_table, write_json_atomic
    from make_synthetic_dataset import DatasetSpec, make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "shapes", DatasetSpec(train=max(4, args.batch), val=1,
                                                              image_size=args.image_size, seed=0))
        rows = [_run_cell(c, *CELLS[c], data, args) for c in tqdm(cells, desc="cells")]
    ref = next((r for r in rows if r["cell"] == "vit_unfrozen"), rows[0])
    for r in rows:
        r["time_ratio_vs_" + ref["cell"]] = r["s_per_step"] / ref["s_per_step"]
        r["saved_ratio_vs_" + ref["cell"]] = r["saved_for_backward_mib"] / ref["saved_for_backward_mib"]
    report = {"device": args.device, "image_size": args.image_size, "batch": args.batch, "steps": args.steps,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "load_avg": loadavg(),
              "machine": machine_info(args.device), "rows": rows}
    print(f"one training step, {args.image_size}px, batch {args.batch}, {args.device}; ratios vs {ref['cell']}")
    header = ["cell", "params M", "train M", "s/step", "x time", "saved MiB", "x saved", "cuda peak MiB"]
    print_table(header, [[r["cell"], f"{r['params_m']:.2f}", f"{r['trainable_m']:.2f}", f"{r['s_per_step']:.3f}",
                          f"{r['time_ratio_vs_' + ref['cell']]:.2f}", f"{r['saved_for_backward_mib']:.1f}",
                          f"{r['saved_ratio_vs_' + ref['cell']]:.2f}", fmt(r["cuda_peak_mib"], ".1f")] for r in rows])
    write_json_atomic(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
