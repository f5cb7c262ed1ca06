"""Train a segmentation head on a frozen ViT: AdamW, warmup + cosine/poly decay, AMP,
gradient clipping, periodic/best/last checkpoints, exact resume, DDP (``torchrun``; gloo on
CPU, NCCL on CUDA)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from .data import Normalize, SegmentationDataset, pair_paths, validate_pairs
from .features import CachedFeatures, cache_key, load_or_compute
from . import runstate
from .metrics import IGNORE_INDEX, confusion_matrix, metrics_from_confusion, write_json_atomic
from .model import SegModel, SegModelConfig, build_seg_model, check_head_overrides, read_checkpoint, save_checkpoint
from .plots import plot_history
from .schedule import make_scheduler

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training options (the ``seg train`` flags)."""

    image_paths: Any
    mask_paths: Any
    checkpoint_dir: str = "checkpoints"
    val_image_paths: Any = None
    val_mask_paths: Any = None
    validate: bool = False
    val_fraction: float = 0.1
    epochs: int = 100
    warmup_epochs: int | None = None  # None: min(10, epochs // 10), which fits any --epochs
    lr: float = 1e-4
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    batch_size: int = 8
    num_workers: int = 4
    grad_clip: float = 1.0
    amp: str = "auto"
    seed: int = 0
    log_interval: int = 10
    save_interval: int = 10
    augment: bool = False
    cache_features: bool = False
    resume_checkpoint: str | None = None
    device: str = "cpu"
    progress: bool = True
    max_steps_per_epoch: int | None = None
    overwrite: bool = False


def resolved_warmup(cfg: TrainConfig) -> int:
    """``--warmup-epochs``, or its default: a tenth of the epochs, at most 10."""
    return min(10, cfg.epochs // 10) if cfg.warmup_epochs is None else int(cfg.warmup_epochs)


class EpochSampler(Sampler[int]):
    """Shuffled indices from a generator seeded by ``(seed, epoch)``; with ``world > 1``
    each rank takes every ``world``-th index of the padded permutation (like
    ``DistributedSampler``), so the order is a function of the epoch alone: resuming at an
    epoch replays exactly the batches an uninterrupted run would see."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, *, shuffle: bool = True,
                 pad: bool = True) -> None:
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.shuffle, self.pad = shuffle, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.size / self.world)
        return len(range(self.rank, self.size, self.world))

    def __iter__(self):
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        if not self.pad:  # validation: every item exactly once over all ranks
            return iter(order[self.rank::self.world])
        total = math.ceil(self.size / self.world) * self.world
        order += order[: total - len(order)]
        return iter(order[self.rank:total:self.world])


def _collate(batch):
    first = batch[0][0]
    if isinstance(first, list):  # cached features
        maps = [torch.stack([b[0][i] for b in batch]) for i in range(len(first))]
        return maps, torch.stack([b[1] for b in batch]), torch.tensor([b[2] for b in batch])
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch]), torch.tensor([b[2] for b in batch])


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA when supported, else fp16 on CUDA, off elsewhere."""
    setting = setting.lower()
    if setting not in ("auto", "off", "bf16", "fp16"):
        raise ValueError(f"--amp must be auto, off, bf16 or fp16, got {setting!r}")
    if setting == "off":
        return None
    if setting == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if setting == "bf16" else torch.float16


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _split(pairs: list, fraction: float, seed: int) -> tuple[list, list]:
    if not 0 < fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, int(round(len(pairs) * fraction)))
    if n_val >= len(pairs):
        raise ValueError(f"{len(pairs)} pairs are too few to hold out a validation split; pass --val-image-paths")
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [pairs[i] for i in train], [pairs[i] for i in val]


def _run(model: torch.nn.Module, inputs, device: torch.device):
    """Forward a batch: cached ViT maps (a list, --cache-features) or images (a tensor)."""
    if isinstance(inputs, list):
        return model(maps=[m.to(device) for m in inputs])
    return model(inputs.to(device))


@torch.no_grad()
def evaluate_loader(model: SegModel, loader: DataLoader, num_classes: int, device: torch.device,
                    autocast: torch.dtype | None = None, progress: bool = False) -> torch.Tensor:
    """Confusion matrix over a loader of ``(images or maps, labels, index)`` at label size."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    for inputs, labels, _ in tqdm(loader, desc="validating", disable=not progress, leave=False):
        labels = labels.to(device)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            out = _run(model, inputs, device)
        pred = model.scores(out, labels.shape[-2:]).argmax(1)
        conf += confusion_matrix(pred, labels, num_classes)
    model.train(was_training)
    return conf


def _check_numbers(cfg: TrainConfig) -> int:
    """The numeric flags; returns the resolved warmup."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"--epochs and --batch-size must be >= 1, got {cfg.epochs}, {cfg.batch_size}")
    warmup = resolved_warmup(cfg)
    if warmup < 0 or warmup > cfg.epochs:
        raise ValueError(f"--warmup-epochs must be in 0..--epochs ({cfg.epochs}), got {warmup}")
    if cfg.save_interval < 1 or cfg.log_interval < 1:
        raise ValueError("--save-interval and --log-interval must be >= 1")
    if cfg.cache_features and cfg.augment:
        raise ValueError("--cache-features needs augmentation off (drop --augment): augmented images change every epoch")
    out_dir = Path(cfg.checkpoint_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--checkpoint-dir '{out_dir}' is an existing file; pass a folder (it is created if missing)")
    return warmup


def _read_resume(path: str, model_config: SegModelConfig, flag: str = "--resume-checkpoint") -> dict[str, Any]:
    """A checkpoint to continue from: readable, with optimizer state, of the same model."""
    resume = read_checkpoint(path, flag)
    if "optimizer" not in resume or "scheduler" not in resume:
        raise ValueError(f"{flag} '{path}' holds only what inference needs (best.pt and epoch_N.pt do); resume "
                         "from the run's last.pt")
    stored = resume["config"]
    for key in ("head", "encoder", "num_classes", "image_size", "head_overrides"):
        if stored.get(key) != asdict(model_config)[key]:
            raise ValueError(f"{flag} was trained with {key}={stored.get(key)!r}, this run asks for "
                             f"{asdict(model_config)[key]!r}; pass the same settings to resume")
    return resume


def train(model_config: SegModelConfig, cfg: TrainConfig) -> dict[str, Any]:
    """Run training; returns the final history entry. All inputs are checked before any
    file is written. A rerun in the same ``checkpoint_dir`` resumes from its ``last.pt`` when
    the fingerprint (settings, data, version) matches and refuses otherwise (``overwrite``
    starts afresh); ``train.lock`` keeps a second run out while this one runs."""
    rank, _, _ = _dist_info()
    warmup = _check_numbers(cfg)
    check_head_overrides(model_config)
    resume = _read_resume(cfg.resume_checkpoint, model_config) if cfg.resume_checkpoint else None

    # ---- inputs: every check before anything is built or written --------------------------
    pairs = pair_paths(cfg.image_paths, cfg.mask_paths)
    counts = validate_pairs(pairs, model_config.num_classes, progress=cfg.progress and rank == 0)
    if int(counts.sum()) == 0:
        raise ValueError(f"every pixel of the {len(pairs)} training masks (first: '{pairs[0][1]}') is "
                         f"{IGNORE_INDEX} (ignore): there is nothing to learn; check that the masks hold class ids")
    val_pairs: list = []
    if cfg.val_image_paths is not None or cfg.val_mask_paths is not None:
        if cfg.val_image_paths is None or cfg.val_mask_paths is None:
            raise ValueError("pass both --val-image-paths and --val-mask-paths")
        val_pairs = pair_paths(cfg.val_image_paths, cfg.val_mask_paths)
        validate_pairs(val_pairs, model_config.num_classes)
    elif cfg.validate:
        pairs, val_pairs = _split(pairs, cfg.val_fraction, cfg.seed)
    logger.info("%d training pairs, %d validation pairs; class pixel counts %s", len(pairs), len(val_pairs),
                counts.tolist())
    fp = runstate.fingerprint(model_config, cfg, pairs, val_pairs, warmup_epochs=warmup)
    lists = runstate.listings(pairs, val_pairs)
    if resume is not None and resume.get("fingerprint") is not None:
        diffs = runstate.differences(resume["fingerprint"], fp)
        if diffs:
            raise ValueError(f"--resume-checkpoint '{cfg.resume_checkpoint}' was trained with other settings "
                             f"({'; '.join(diffs[:6])}); pass that run's settings to resume it")
    out_dir = Path(cfg.checkpoint_dir)
    lock = runstate.directory_lock(out_dir) if rank == 0 else contextlib.nullcontext()
    with lock:
        found = runstate.resume_point(out_dir, fp, lists, overwrite=cfg.overwrite)
        if resume is None and found is not None:
            resume = _read_resume(str(found), model_config, flag="the last.pt in --checkpoint-dir")
            if rank == 0:
                print(f"resuming {found} at epoch {int(resume['epoch'])}/{cfg.epochs} (same settings; pass "
                      "--overwrite to start afresh)", file=sys.stderr)
        return _train(model_config, cfg, warmup, resume, pairs, val_pairs, fp, lists)


def _train(model_config: SegModelConfig, cfg: TrainConfig, warmup: int, resume: dict[str, Any] | None,
           pairs: list, val_pairs: list, fp: dict[str, Any], lists: dict[str, list]) -> dict[str, Any]:
    """The run itself, inside the directory lock, after every input check."""
    from tqdm import tqdm

    rank, world, local_rank = _dist_info()
    out_dir = Path(cfg.checkpoint_dir)
    # ---- process group, seeds, model -------------------------------------------------------
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
    device = torch.device(f"cuda:{local_rank}" if cfg.device == "cuda" and world > 1 else cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_seg_model(model_config, device=device)
    if rank == 0:
        if cfg.overwrite:
            removed = runstate.clear_run(out_dir)
            if removed:
                logger.warning("--overwrite: removed %s from %s", ", ".join(removed), out_dir)
        runstate.write_fingerprint(out_dir, fp, lists)
    if world > 1:
        dist.barrier()  # no rank reads the directory's old run after rank 0 cleared it
    if resume is not None:
        missing, unexpected = model.load_state_dict(resume["model"], strict=False)
        if unexpected or [k for k in missing if not k.startswith("trunk.vit.")]:
            raise ValueError(f"--resume-checkpoint weights do not fit the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    normalize = Normalize(model_config.mean, model_config.std)
    train_set: Dataset = SegmentationDataset(pairs, model_config.image_size, normalize, augment=cfg.augment,
                                             seed=cfg.seed)
    val_set: Dataset | None = (SegmentationDataset(val_pairs, model_config.image_size, normalize)
                               if val_pairs else None)
    out_dir = Path(cfg.checkpoint_dir)
    if cfg.cache_features:
        key = cache_key({**asdict(model_config), "class_names": None}, pairs)
        kwargs = dict(device=device, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                      progress=cfg.progress and rank == 0)
        levels, labels = load_or_compute(out_dir / "feature_cache" / f"train-{key}.pt", model, train_set, **kwargs)
        train_set = CachedFeatures(levels, labels)
        if val_set is not None:
            vkey = cache_key({**asdict(model_config), "class_names": None}, val_pairs)
            val_set = CachedFeatures(*load_or_compute(out_dir / "feature_cache" / f"val-{vkey}.pt", model, val_set,
                                                      **kwargs))
    sampler = EpochSampler(len(train_set), cfg.seed, rank, world)
    steps_per_epoch = math.ceil(len(sampler) / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    scheduler = make_scheduler(optimizer, total_steps=cfg.epochs * steps_per_epoch,
                               warmup_steps=warmup * steps_per_epoch, kind=cfg.schedule,
                               min_ratio=cfg.min_lr_ratio)
    start_epoch, best, history = 0, -math.inf, []
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        start_epoch, best, history = int(resume["epoch"]), float(resume["best_miou"]), list(resume["history"])
        logger.info("resumed at epoch %d", start_epoch)

    ddp_model: Any = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=_collate, drop_last=False, persistent_workers=False)
    val_loader = (DataLoader(val_set, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=_collate,
                             sampler=EpochSampler(len(val_set), 0, rank, world, shuffle=False, pad=False)
                             if world > 1 else None)
                  if val_set is not None else None)
    if rank == 0:
        write_json_atomic({"model": asdict(model_config), "train": {**{k: str(v) if isinstance(v, Path) else v
                                                                       for k, v in asdict(cfg).items()},
                                                                    "warmup_epochs": warmup},
                           "world_size": world, "train_pairs": len(pairs), "val_pairs": len(val_pairs)},
                          out_dir / "run_config.json")

    entry: dict[str, Any] = dict(history[-1]) if history else {}
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        t0 = time.perf_counter()
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (cfg.progress and rank == 0), leave=False)
        for step, (inputs, labels, _) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            labels = labels.to(device)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                outputs = _run(ddp_model, inputs, device)
                loss = model.loss(outputs, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += torch.tensor([float(loss.detach()), 1.0], dtype=torch.float64, device=device)
            if (step + 1) % cfg.log_interval == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                logger.info("epoch %d step %d/%d loss %.4f lr %.3e", epoch + 1, step + 1, steps_per_epoch,
                            float(loss), scheduler.get_last_lr()[0])
        if world > 1:
            dist.all_reduce(loss_sum)
        entry = {"epoch": epoch + 1, "train_loss": float(loss_sum[0] / max(loss_sum[1], 1)),
                 "lr": scheduler.get_last_lr()[0], "epoch_seconds": time.perf_counter() - t0}
        if val_loader is not None:
            conf = evaluate_loader(model, val_loader, model_config.num_classes, device, autocast)
            if world > 1:
                dist.all_reduce(conf)
            entry.update(metrics_from_confusion(conf.cpu(), model_config.names))
        history.append(entry)
        miou = entry.get("mIoU", math.nan)
        improved = val_loader is not None and math.isfinite(miou) and miou > best
        if improved:
            best = miou
        if rank == 0:
            # optimizer/scheduler state (2x the head for AdamW) only where a resume reads it
            inference = dict(epoch=epoch + 1, best_miou=best,
                             metrics={k: v for k, v in entry.items() if k != "per_class_iou"})
            save_checkpoint(out_dir / "last.pt", model, optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), history=history, fingerprint=fp, **inference)
            if (epoch + 1) % cfg.save_interval == 0 or epoch + 1 == cfg.epochs:
                save_checkpoint(out_dir / f"epoch_{epoch + 1:04d}.pt", model, **inference)
            if improved:
                save_checkpoint(out_dir / "best.pt", model, **inference)
            if val_loader is not None:
                write_json_atomic(entry, out_dir / "metrics" / f"epoch_{epoch + 1:04d}.json")
            write_json_atomic(history, out_dir / "history.json")
            plot_history(history, out_dir / "curves.png")
            logger.info("epoch %d: %s", epoch + 1, {k: v for k, v in entry.items() if k != "per_class_iou"})
    if world > 1:
        dist.barrier()
    return entry
