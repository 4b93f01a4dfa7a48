"""Which path a generate() call takes: "torch" (the reference, any device) or "fast" (fused
kernels + a CUDA graph of the whole denoising step).

Auto (the default) picks "fast" only where it is known to work: a CUDA GPU of compute capability
8.0 or newer (Ampere, Ada, Hopper, Blackwell), Triton installed, the counter-based RNG (the fused
head draws its samples with that hash) and no top-k recording (the fused head never holds full
probabilities). Everywhere else, CPUs included, it picks "torch".

Forcing path="fast" on a CPU runs the same static-buffer step without a graph, with the Triton
kernels under TRITON_INTERPRET=1 or else their PyTorch references: slow, for tests.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

from ..errors import DeviceError, InputError

PATHS = ("auto", "torch", "fast")


def triton_status(device: torch.device) -> tuple[bool, str]:
    """(whether the Triton kernels can run on `device`, why not / how)."""
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


def select_path(path: str | None, device: torch.device, rng: str, record_topk: int, fp8: bool = False) -> str:
    """'torch' or 'fast' for this call (`fp8`: the model's experts are quantized). Raises
    InputError/DeviceError naming the fix when path='fast' is forced where it cannot run."""
    if path is None or path == "auto":
        usable = device.type == "cuda" and triton_status(device)[0] and (not fp8 or _has_fp8(device))
        return "fast" if usable and rng == "counter" and record_topk == 0 else "torch"
    if path == "torch":
        return "torch"
    if path != "fast":
        raise InputError(f"path must be one of {PATHS} (None means 'auto'); got {path!r}.")
    if rng != "counter":
        raise InputError(f"path='fast' samples with the counter-based RNG inside the fused head; rng={rng!r} "
                         "needs the PyTorch path: use rng='counter' or path='torch'.")
    if record_topk:
        raise InputError("path='fast' never materialises the probabilities, so record_topk is not available: "
                         "use record_topk=0 or path='torch'.")
    if device.type == "cuda":
        usable, why = triton_status(device)
        if not usable:
            raise DeviceError(f"path='fast' needs the Triton kernels, but {why}; use path='torch' (or path=None).")
        if fp8 and not _has_fp8(device):
            raise DeviceError("path='fast' with fp8 experts needs a GPU with fp8 conversions (compute capability "
                              "8.9+: Ada, Hopper, Blackwell); use path='torch' or bf16 experts.")
    elif device.type != "cpu":
        raise DeviceError(f"path='fast' runs on CUDA GPUs (and, for tests, CPUs); not on {device.type!r}: "
                          "use path='torch'.")
    return "fast"


def _has_fp8(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (8, 9)


class FallbackStepper:
    """What path=None gets where the fast path is chosen: the fast stepper, unless its first round
    fails (say, a kernel that does not compile on this GPU): then a one-line note and the PyTorch
    step for the rest of the call. Nothing is lost: the fast stepper writes the canvas state only
    after a round succeeds, and every round rewrites the KV cache's canvas slots. A failure after
    the first round is not hidden."""

    def __init__(self, fast, fallback) -> None:
        self.fast, self.fallback = fast, fallback

    def __call__(self, *args, **kwargs):
        if self.fast is not None:
            try:
                return self.fast(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - reported, then the reference path takes over
                if self.fast.replays:
                    raise
                logging.getLogger("dgemma_helpers").warning(
                    "fast path failed on its first round (%s: %s); using the PyTorch path (path='torch' skips "
                    "the attempt)", type(e).__name__, str(e)[:200])
                self.fast = None
        return self.fallback(*args, **kwargs)


def stepper(path: str | None, model, settings, rng: str, record_topk: int, torch_step):
    """The step function generate() runs: `torch_step` (generation.denoise_step, passed in because
    generation imports this module), the fast stepper (forced), or the fast stepper with a fallback
    to `torch_step` (auto)."""
    from ..quant import is_quantized
    from .step import FastStepper

    if select_path(path, model.device, rng, record_topk, fp8=is_quantized(model)) == "torch":
        return torch_step
    fast = FastStepper(model, settings)
    return fast if path == "fast" else FallbackStepper(fast, torch_step)
