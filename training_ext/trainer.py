"""``CPUTrainer``: upstream ``training.trainer.Trainer`` made to run without CUDA.

Upstream assumes CUDA in four places; each is fixed here by overriding or wrapping, never
by editing upstream:

1. ``Trainer.train_epoch`` builds a ``MemMeter`` whose ``update`` calls
   ``torch.cuda.max_memory_allocated`` / ``torch.cuda.reset_peak_memory_stats`` after every
   step (crashes with no GPU). :meth:`CPUTrainer.train_epoch` runs upstream's loop with
   ``training.trainer.MemMeter`` bound to :class:`CPUMemMeter` (peak RSS) for its duration.
   (``Trainer.val_epoch`` already guards its meter with ``torch.cuda.is_available()``.)
2. ``Trainer._run_step`` / ``val_epoch`` autocast with ``torch.cuda.amp.autocast`` only.
   :meth:`CPUTrainer._step` (called inside them) opens ``torch.autocast("cpu", ...)`` with the
   same ``optim.amp`` settings, so ``amp.enabled`` means the same thing on CPU.
3. Upstream configs set ``pin_memory: True`` on the data loaders, which warns and does
   nothing without CUDA; :meth:`CPUTrainer._setup_dataloaders` turns it off.
4. The distributed backend: upstream ``_infer_distributed_backend_if_none`` already picks
   ``gloo`` for ``accelerator: cpu`` and ``_setup_ddp_distributed_training`` passes no
   ``device_ids``; nothing to fix. DDP only registers parameters with ``requires_grad``, so a
   frozen ViT is never all-reduced; :meth:`_setup_ddp_distributed_training` records which
   parameters DDP synchronises in ``<log_dir>/ddp_params.json`` so that can be checked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
from typing import Any, Iterator

import torch
import training.trainer as upstream_trainer
from omegaconf import open_dict
from training.trainer import Trainer
from training.utils.train_utils import get_amp_type

logger = logging.getLogger(__name__)


class CPUMemMeter(upstream_trainer.MemMeter):
    """Upstream ``MemMeter`` reporting the process's peak resident memory (GB) instead of CUDA's."""

    def update(self, n: int = 1, reset_peak_usage: bool = True) -> None:
        # ru_maxrss is in KiB on Linux and bytes on macOS; it cannot be reset, so it is a lifetime peak
        scale = 1 if sys.platform == "darwin" else 1024
        self.val = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9
        self.sum += self.val * n
        self.count += n
        self.avg = self.sum / self.count
        self.peak = max(self.peak, self.val)


@contextlib.contextmanager
def _cpu_mem_meter() -> Iterator[None]:
    original = upstream_trainer.MemMeter
    upstream_trainer.MemMeter = CPUMemMeter
    try:
        yield
    finally:
        upstream_trainer.MemMeter = original


class CPUTrainer(Trainer):
    """Upstream ``Trainer`` with the CUDA-only calls replaced (see the module docstring).

    Selected by ``training_ext`` when ``trainer.accelerator`` is ``cpu``; takes exactly
    upstream's keyword-only arguments.
    """

    def train_epoch(self, train_loader: Any) -> dict:
        # upstream Trainer.train_epoch -> MemMeter.update -> torch.cuda.reset_peak_memory_stats
        if self.device.type == "cuda":
            return super().train_epoch(train_loader)
        with _cpu_mem_meter():
            return super().train_epoch(train_loader)

    def _step(self, batch: Any, model: torch.nn.Module, phase: str):
        # upstream Trainer._run_step / val_epoch wrap this in torch.cuda.amp.autocast only
        amp = self.optim_conf.amp if self.optim_conf is not None else None
        if self.device.type != "cpu" or amp is None or not amp.enabled:
            return super()._step(batch, model, phase)
        with torch.autocast(device_type="cpu", dtype=get_amp_type(amp.amp_dtype)):
            return super()._step(batch, model, phase)

    def _setup_dataloaders(self) -> None:
        # upstream Trainer._setup_dataloaders instantiates loaders with the config's pin_memory
        if self.device.type == "cpu":
            with open_dict(self.data_conf):
                for phase in ("train", "val"):
                    if self.data_conf.get(phase) is not None and "pin_memory" in self.data_conf[phase]:
                        self.data_conf[phase].pin_memory = False
        super()._setup_dataloaders()

    def _setup_ddp_distributed_training(self, distributed_conf: Any, accelerator: str) -> None:
        super()._setup_ddp_distributed_training(distributed_conf, accelerator)
        if self.distributed_rank != 0:
            return
        module = self.model.module
        # the same rule as torch's DistributedDataParallel._build_params_for_reducer: only
        # parameters with requires_grad get gradient buckets (and all-reduces)
        synced = [n for n, p in module.named_parameters() if p.requires_grad]
        frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
        report = {
            "world_size": torch.distributed.get_world_size(),
            "backend": torch.distributed.get_backend(),
            "find_unused_parameters": bool(distributed_conf.find_unused_parameters),
            "synced_params": len(synced),
            "synced_numel": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "frozen_params": len(frozen),
            "frozen_numel": sum(p.numel() for p in module.parameters() if not p.requires_grad),
            "synced_names": synced,
        }
        path = os.path.join(self.logging_conf.log_dir, "ddp_params.json")
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, path)
        logger.info("DDP (%s, world %d) synchronises %d parameter tensors; %d frozen tensors are not all-reduced",
                    report["backend"], report["world_size"], len(synced), len(frozen))
