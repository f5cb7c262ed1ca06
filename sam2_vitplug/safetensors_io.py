"""safetensors files with the same bytes in every process.

Why: the safetensors library writes its ``__metadata__`` map in hash order, which changes from
one process to the next, so two runs on the same inputs wrote files that differ in their
header although every tensor is the same. :func:`safetensors_bytes` rewrites the header as JSON
with sorted keys (data offsets are part of each entry, so the data section is untouched), padded
with spaces to 8 bytes as the format asks. Files stay readable by any safetensors reader.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import torch


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors serialisation of ``tensors`` with a canonical (sorted, compact) header."""
    from safetensors.torch import save

    raw = save(dict(tensors), metadata=dict(metadata) if metadata is not None else None)
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + length:]


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write :func:`safetensors_bytes` to ``path`` (callers make it atomic: write a temp name, rename)."""
    with open(path, "wb") as fh:
        fh.write(safetensors_bytes(tensors, metadata))
