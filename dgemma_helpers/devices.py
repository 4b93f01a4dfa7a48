"""Device and dtype resolution, with errors that say what exists here instead; what a device can run
(Triton, fp8) and so which denoising step a generate() call runs (`select_path`)."""

from __future__ import annotations

import importlib.util
import os

import torch

from .errors import DeviceError, InputError
from .validate import check

PATHS = ("auto", "torch", "fast")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The default is the first GPU when there is one, else the CPU; a device that does not exist is refused."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check(isinstance(device, (str, torch.device)), DeviceError, "device must be a string or a torch.device (got "
          f"{type(device).__name__}); use 'cpu', 'cuda' or 'cuda:N'.")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):  # torch's message lists every device type it knows: not helpful here
        raise DeviceError(f"{device!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'.") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        build = f"CUDA {torch.version.cuda}, but no GPU is visible" if torch.version.cuda else "a CPU-only build"
        check(torch.cuda.is_available(), DeviceError, f"device {str(device)!r} requested, but CUDA is not available "
              f"here (torch {torch.__version__}, {build}); use device='cpu'.")
        count = torch.cuda.device_count()
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        check(index < count, DeviceError, f"device {str(device)!r} does not exist: this machine has {count} GPU(s), "
              f"cuda:0..cuda:{count - 1}.")
        return torch.device("cuda", index)
    if dev.type == "mps":
        check(torch.backends.mps.is_available(), DeviceError,
              f"device {str(device)!r} requested, but Apple MPS is not available here; use device='cpu'.")
        return dev
    raise DeviceError(f"device type {dev.type!r} is not supported by this kit; use 'cpu' or 'cuda'.")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The default is bfloat16 on a GPU and float32 on the CPU."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        check(dtype in DTYPES.values(), DeviceError,
              f"dtype {dtype} is not supported; use float32, bfloat16 or float16.")
        return dtype
    key = str(dtype).replace("torch.", "")
    check(key in DTYPES, DeviceError, f"dtype {dtype!r} is not supported; use 'float32', 'bfloat16' or 'float16'.")
    return DTYPES[key]


def proc_kib(path: str, key: str) -> int | None:
    """A "key: N kB" line of a Linux /proc file (meminfo, status), in bytes; None where there is none."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory(device: torch.device) -> int | None:
    """Free bytes on the device, or None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # What PyTorch's caching allocator holds but no tensor uses (say, an earlier call's cache) is
        # free for the next allocation too, though the driver counts it as taken.
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        available = proc_kib("/proc/meminfo", "MemAvailable")
        if available is not None:
            return available
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def triton_support(device: torch.device) -> tuple[bool, str]:
    """(whether the kit's Triton kernels can run on `device`, why not / how)."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton, or pip install -e '.[dev]')"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 0):
            return False, f"the GPU has compute capability {major}.{minor}; the kernels need 8.0 or newer"
        return True, f"CUDA, compute capability {major}.{minor}"
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return True, "CPU, Triton interpreter (TRITON_INTERPRET=1)"
        return False, "on a CPU the Triton kernels run only under TRITON_INTERPRET=1"
    return False, f"Triton has no backend for device type {device.type!r}"


def has_fp8(device: torch.device) -> bool:
    """fp8 (e4m3) conversions in hardware: compute capability 8.9+ (Ada, Hopper, Blackwell)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def select_path(path: str | None, device: torch.device, rng: str, record_topk: int,
                fp8: bool = False) -> tuple[str, str | None]:
    """('torch' or 'fast', why auto did not pick 'fast') for this call (`fp8`: the model's experts are
    quantized). Auto picks 'fast' only where it is known to work; a forced path='fast' that cannot run
    is refused with the fix, and on a CPU runs the same round without a graph (kernels under
    TRITON_INTERPRET=1, else their PyTorch references): slow, for tests."""
    if path is None or path == "auto":
        if device.type != "cuda":
            return "torch", f"the fast path needs a CUDA GPU; the model is on {device.type!r}"
        usable, why = triton_support(device)
        if not usable:
            return "torch", why
        if fp8 and not has_fp8(device):
            return "torch", "fp8 experts need a GPU with fp8 conversions (compute capability 8.9+)"
        if rng != "counter":
            return "torch", f"rng={rng!r} replays transformers' draws, which need full probabilities"
        if record_topk:
            return "torch", "record_topk needs full probabilities, which the fused head never holds"
        return "fast", None
    if path == "torch":
        return "torch", None
    check(path == "fast", InputError, f"path must be one of {PATHS} (None means 'auto'); got {path!r}.")
    check(rng == "counter", InputError, f"path='fast' samples with the counter-based RNG inside the fused head; "
          f"rng={rng!r} needs the PyTorch path: use rng='counter' or path='torch'.")
    check(not record_topk, InputError, "path='fast' never materialises the probabilities, so record_topk is not "
          "available: use record_topk=0 or path='torch'.")
    check(device.type in ("cuda", "cpu"), DeviceError, f"path='fast' runs on CUDA GPUs (and, for tests, CPUs); not "
          f"on {device.type!r}: use path='torch'.")
    if device.type == "cuda":
        usable, why = triton_support(device)
        check(usable, DeviceError, f"path='fast' needs the Triton kernels, but {why}; use path='torch' (or path=None).")
        check(not fp8 or has_fp8(device), DeviceError, "path='fast' with fp8 experts needs a GPU with fp8 conversions "
              "(compute capability 8.9+: Ada, Hopper, Blackwell); use path='torch' or bf16 experts.")
    return "fast", None
