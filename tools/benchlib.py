"""What every ``tools/bench_*.py`` needs: a timer, a table printer and a JSON report writer.

One copy, so all benchmarks time the same way (CUDA synchronised before and after, process CPU
time next to wall time, medians over repeats after warm-ups) and write reports with the same
machine description. It lives in ``tools/`` rather than the package: only the benchmark tools
use it, and they import each other by file name (``sys.path`` holds ``tools/`` when one runs).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for sam2_vitplug

from sam2_vitplug.atomic import atomic_target  # noqa: E402


def sync(device: torch.device | str | None) -> None:
    """Wait for queued CUDA work, so a timer stops when the work is done, not when it is queued."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str | None = None) -> tuple[Any, float, float]:
    """Run ``fn()`` once: ``(its result, wall seconds, this process's CPU seconds)``."""
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0, time.process_time() - c0


def median(values: Sequence[float]) -> float | None:
    """Median, or None for no values (a cell that was not timed)."""
    return statistics.median(values) if values else None


@dataclass
class Timing:
    """Wall and CPU seconds of the timed repeats (warm-ups excluded)."""

    times_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)

    @property
    def min_s(self) -> float | None:
        return min(self.times_s) if self.times_s else None

    @property
    def median_s(self) -> float | None:
        return median(self.times_s)


def time_repeats(fn: Callable[[], Any], device: torch.device | str | None = None, *, warmup: int = 1,
                 repeats: int = 3) -> Timing:
    """``warmup`` untimed calls (lazy init, allocator, caches), then ``repeats`` timed ones."""
    for _ in range(warmup):
        timed(fn, device)
    timing = Timing()
    for _ in range(repeats):
        _, wall, cpu = timed(fn, device)
        timing.times_s.append(wall)
        timing.cpu_s.append(cpu)
    return timing


def fmt(value: Any, spec: str, width: int = 0) -> str:
    """``format(value, spec)`` right-aligned to ``width``; ``-`` for a missing value."""
    return ("-" if value is None else format(value, spec)).rjust(width)


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None) -> None:
    """Left-aligned columns as wide as their widest cell, one rule under the header
    (:func:`sam2_vitplug.tables.format_table`)."""
    from sam2_vitplug.tables import format_table

    print(format_table(header, rows, full_rule=True), file=out or sys.stdout)


def _read_field(path: str, prefix: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load: on a shared machine it says how disturbed the timings were."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Versions, threads, CPU/GPU name, memory and load: what a reader needs to compare two reports."""
    device = torch.device(device)
    cpu_model = _read_field("/proc/cpuinfo", "model name") or platform.processor() or None
    mem_kib = _read_field("/proc/meminfo", "MemTotal:")
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "sam2": _version("sam2"),
        "sam2_vitplug": _version("sam2_vitplug") or _version("sam2-vitplug"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model,
        "cpu_model": cpu_model,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mem_total_gib": int(mem_kib.split()[0]) / 2**20 if mem_kib else 0.0,
        "loadavg_start": loadavg(),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int = 2) -> None:
    """JSON to ``path`` via a temporary file and rename (an interrupted run leaves the old report,
    never half of one), with the umask's permissions; values JSON lacks are written as ``str``."""
    with atomic_target(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=indent, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
