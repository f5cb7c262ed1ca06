"""Peak memory of one forward, on CPU (the kernel's resettable peak RSS) or CUDA (allocator stats).

Shared by the benchmark tools; ``MEM_METHODS`` is the text their JSON reports cite for each mode."""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
from typing import Any

import torch

MEM_METHODS = {
    "subprocess": (
        "fresh subprocess per cell, one forward (no warm-up) after building the model; peak = VmHWM after the "
        "forward - VmRSS before it, with VmHWM reset via /proc/self/clear_refs=5 after building (ru_maxrss "
        "after-before kept as 'ru_maxrss_delta_mib', a lower bound if building peaked higher)"
    ),
    "inprocess": (
        "in this process around every timed forward: malloc_trim, VmHWM reset via /proc/self/clear_refs=5, "
        "peak = VmHWM after - VmRSS before; reported value = max over the timed repeats (may read low if the "
        "allocator reuses memory kept from earlier forwards)"
    ),
    "cuda": "torch.cuda.max_memory_allocated() after the forward - torch.cuda.memory_allocated() before it "
    "(reset_peak_memory_stats before each timed forward); max over the timed repeats",
    "off": "not measured",
}


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024


def _ru_maxrss_kib() -> float:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / 1024 if sys.platform == "darwin" else float(value)


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:  # noqa: BLE001 - not glibc
        pass


class MemProbe:
    """Peak memory increase of one forward (MiB), on CPU (RSS) or CUDA (allocator)."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.device = device
        self.enabled = enabled
        self._state: dict[str, Any] = {}

    def start(self) -> None:
        if not self.enabled:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._state = {"base": torch.cuda.memory_allocated(self.device)}
            return
        gc.collect()
        _malloc_trim()
        ru0 = _ru_maxrss_kib()
        rss0 = _status_kib("VmRSS")
        self._state = {"ru0": ru0, "rss0": rss0, "hwm_ok": _reset_peak_rss()}

    def stop(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._state["base"]
            return {"peak_mib": peak / 2**20, "method": "cuda"}
        ru1 = _ru_maxrss_kib()
        out: dict[str, Any] = {"ru_maxrss_delta_mib": max(0.0, ru1 - self._state["ru0"]) / 1024}
        hwm = _status_kib("VmHWM")
        if self._state["hwm_ok"] and hwm is not None and self._state["rss0"] is not None:
            out.update(peak_mib=(hwm - self._state["rss0"]) / 1024, method="VmHWM-reset")
        else:
            out.update(peak_mib=out["ru_maxrss_delta_mib"], method="ru_maxrss")
        return out
