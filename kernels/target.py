"""Which GPU a launch compiles for, so that each kernel picks its tiles per target.

Tiles that suit one architecture spill registers on another: Hopper's and Blackwell's tensor-core
instructions keep an accumulator in fewer registers per thread than Ampere's and the RTX Pro
6000's (sm_120) mma.sync, and sm_120 and consumer parts have ~99 KB of shared memory per block
where Hopper has 227 KB. tools/compile_check.py compiles every choice for every target and holds them to
"no spills, shared memory within the limit"."""

from __future__ import annotations

import torch
from triton.runtime import driver


def gpu_arch(device: torch.device) -> int | None:
    """The compute capability as Triton numbers it (80 = sm_80, 120 = sm_120) that kernels launched
    for `device` compile for, or None on a CPU (the Triton interpreter). Asked of Triton's active
    driver: the GPU itself, or the stand-in target of the ahead-of-time compile check."""
    if device.type == "cpu":
        return None
    return driver.active.get_current_target().arch
