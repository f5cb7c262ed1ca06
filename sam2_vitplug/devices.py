"""One place that turns a ``--device`` string into a device every command can use.

Why: torch accepts ``cuda`` on a machine without a GPU (and fails later, mid-run, with a
RuntimeError) and rejects ``tpu9`` with a message that names neither the flag nor the fix;
every command that takes ``--device`` calls :func:`parse_device` before it writes anything.
"""

from __future__ import annotations

import re

KINDS = ("cuda", "mps", "cpu")


def default_device() -> str:
    """``cuda`` if available, else ``mps``, else ``cpu`` (docs/architecture.md section 6)."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if _mps_available():
        return "mps"
    return "cpu"


def _mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def parse_device(text: str | None, flag: str = "--device") -> str:
    """``None`` -> the best available device; else ``cpu``, ``mps``, ``cuda`` or ``cuda:N``,
    checked against what this machine has. Raises ValueError with one line naming the value
    and what to pass instead."""
    if text is None or str(text).strip() == "":
        return default_device()
    value = str(text).strip().lower()
    match = re.fullmatch(r"(cuda|mps|cpu)(?::(\d+))?", value)
    if match is None:
        raise ValueError(f"{flag} {text!r} is not a device; use cpu, cuda, cuda:N or mps (default: the best available)")
    kind, index = match.group(1), match.group(2)
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {text}: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                             "use --device cpu")
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise ValueError(f"{flag} {text}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif kind == "mps":
        if not _mps_available():
            raise ValueError(f"{flag} {text}: Apple MPS is not available here; use --device cpu")
        if index not in (None, "0"):
            raise ValueError(f"{flag} {text}: there is only one MPS device; use --device mps")
    elif index not in (None, "0"):
        raise ValueError(f"{flag} {text}: use --device cpu (there is one CPU device)")
    return value
