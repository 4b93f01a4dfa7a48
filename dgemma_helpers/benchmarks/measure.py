"""What the benchmarks measure with: a process's peak memory (per run, on a CPU and on a GPU) and a
device's copy bandwidth (the floor a weight-streaming step cannot beat)."""

from __future__ import annotations

import contextlib
import sys

import torch

from ..devices import proc_kib
from .gpu import time_it

try:
    import resource  # POSIX only: on Windows the CPU peak memory is not measured
except ImportError:
    resource = None


def resident_peak(reset: bool = False) -> int | None:
    """This process's peak resident memory in bytes (Linux: VmHWM), or None where it cannot be read.
    `reset=True` starts a new peak from the current size (ru_maxrss cannot be reset)."""
    if reset:
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    return proc_kib("/proc/self/status", "VmHWM")


def resident_now() -> int | None:
    """This process's resident memory in bytes now (Linux: VmRSS), or None."""
    return proc_kib("/proc/self/status", "VmRSS")


def copy_bandwidth(device: torch.device, nbytes: int = 256 * 2**20, reps: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + written), the median of `reps` copies of
    `nbytes`: the speed limit for streaming weights."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / time_it(lambda: dst.copy_(src), device, warm=1, reps=reps)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _clear_rss_peak()


def read_peak_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    # VmHWM, not getrusage's ru_maxrss: a process started from a larger parent (a notebook kernel, a
    # test runner's child) inherits the parent's size in ru_maxrss, and no reset lowers it.
    peak = resident_peak()
    if peak is not None or resource is None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


_RSS_RESETTABLE: bool | None = None


def _clear_rss_peak() -> bool:
    """Reset the resident high-water mark where Linux lets a process; say whether it could."""
    global _RSS_RESETTABLE
    if _RSS_RESETTABLE is not False:
        _RSS_RESETTABLE = resident_peak(reset=True) is not None
    return _RSS_RESETTABLE


def peak_memory_kind(device: torch.device, short: bool = False) -> str:
    if device.type == "cuda":
        return "cuda_allocated" if short else "CUDA max_memory_allocated per run (tensors only, not the allocator's cache)"
    if resource is None:
        return "none" if short else "not measured (no getrusage on this platform)"
    if _RSS_RESETTABLE is None:
        _clear_rss_peak()
    if _RSS_RESETTABLE:
        return "cpu_rss_peak" if short else ("process RSS high-water mark per run (VmHWM, reset before each run): "
                                             "the whole process, every loaded model included")
    return "cpu_rss_peak_since_start" if short else "process RSS high-water mark since the process started (getrusage)"
