"""Which weights did a run actually use? A per-tensor digest dump, switched on by one variable.

Why: "it ran and the shapes were right" proves nothing about weights; a checkpoint whose trunk
was never loaded runs just as well. With ``SAM2_VITPLUG_WEIGHTS_AUDIT=DIR`` set, every SAM2
model that :func:`sam2_vitplug.build.build_sam2_vit` returns and every ViT that
:func:`sam2_vitplug.encoders.load_encoder` returns writes ``DIR/<kind>-<pid>-<n>.json``: its
source and, per tensor, the shape, dtype and sha256 of the raw bytes. Tests (and users who
doubt a run) compare those digests with the checkpoint's own tensors. Off (the default),
this costs nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

ENV_VAR = "SAM2_VITPLUG_WEIGHTS_AUDIT"
_counter = itertools.count()


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's raw bytes (native byte order, any dtype, bf16 included)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes."""
    return hashlib.sha256(_raw_bytes(tensor)).hexdigest()


def state_digests(state: Mapping[str, torch.Tensor]) -> dict[str, dict]:
    """``{name: {"shape", "dtype", "sha256"}}`` for every tensor of a state dict."""
    return {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "sha256": tensor_digest(t)}
        for name, t in state.items()
    }


def record_weights(kind: str, model: nn.Module, source: str) -> Path | None:
    """Write the digest file of ``model`` when :data:`ENV_VAR` names a folder; else do nothing."""
    folder = os.environ.get(ENV_VAR)
    if not folder:
        return None
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{kind}-{os.getpid()}-{next(_counter)}.json"
    payload = {"kind": kind, "source": source, "class": type(model).__name__,
               "tensors": state_digests(model.state_dict())}
    path.write_text(json.dumps(payload, indent=1, sort_keys=True))
    return path


def read_records(folder: str | os.PathLike, kind: str | None = None) -> list[dict]:
    """Every digest file in ``folder`` (of ``kind`` if given), oldest first."""
    files = sorted(Path(folder).glob(f"{kind or '*'}-*.json"), key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(p.read_text()) for p in files]


def weights_sha256(state: Mapping[str, torch.Tensor] | nn.Module) -> str:
    """One sha256 over every tensor's name, dtype, shape and bytes (sorted by name): equal
    exactly when two models hold the same weights, wherever they were loaded from."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_raw_bytes(t))
    return h.hexdigest()
