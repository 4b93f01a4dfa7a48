"""FP8 (e4m3) expert weights, quantised at load time: half the bytes of the weights that dominate a
denoising step (the experts are 45.6 of the real model's 50.5 GB), so half the weight-streaming time.

    model = dg.load_model(path, device="cuda")
    dg.quantize_experts(model)          # every layer's experts -> float8_e4m3fn + float32 scales

One scale per output channel (per row of gate_up [E, 2I, H] and of down [E, H, I]): scale =
max|w| / 448, the largest e4m3 value, so every weight is representable and the rounding error is
relative to its own channel. The fused MoE kernel (kernels/moe.py) reads the fp8 bytes and applies
the scales to its accumulators; the PyTorch path dequantises on the fly (Fp8Experts is a drop-in
model.Experts whose weights are computed properties), which is slow but exact to the kernel's math
and works on any device, CPUs included, so the logit error can be measured anywhere.
"""

from __future__ import annotations

import dgemma_kernels as kernels
import torch
from torch import nn

from ..errors import InputError
from ..model import DiffusionGemma, Experts

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., out, in] -> (float8_e4m3fn weights, float32 scales [..., out]) with w ~ q * scale."""
    amax = w.detach().abs().amax(dim=-1).float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (w.float() / scale[..., None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale[..., None]).to(dtype)


class Fp8Experts(Experts):
    """model.Experts with fp8 weights. `gate_up_proj` / `down_proj` are dequantised on access, so
    Experts.forward (the PyTorch reference path) runs unchanged; fast paths read `*_fp8` and
    `*_scale` directly."""

    packable = False

    def __init__(self, experts: Experts) -> None:
        nn.Module.__init__(self)  # not Experts.__init__: no bf16 parameters to allocate
        self.dtype = experts.gate_up_proj.dtype
        gate_up, gate_up_scale = quantize_fp8(experts.gate_up_proj)
        down, down_scale = quantize_fp8(experts.down_proj)
        self.register_buffer("gate_up_fp8", gate_up)
        self.register_buffer("gate_up_scale", gate_up_scale)
        self.register_buffer("down_fp8", down)
        self.register_buffer("down_scale", down_scale)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        if kernels.active():  # the fused kernel reads the fp8 bytes and applies the scales itself
            return kernels.run_moe(x, weights, experts, self.gate_up_fp8, self.down_fp8, self.gate_up_scale,
                               self.down_scale)
        return super().forward(x, weights, experts)

    @property
    def gate_up_proj(self) -> torch.Tensor:  # type: ignore[override]
        return dequantize_fp8(self.gate_up_fp8, self.gate_up_scale, self.dtype)

    @property
    def down_proj(self) -> torch.Tensor:  # type: ignore[override]
        return dequantize_fp8(self.down_fp8, self.down_scale, self.dtype)


def quantize_experts(model: DiffusionGemma, kind: str = "fp8") -> DiffusionGemma:
    """Replace every layer's expert weights by fp8 (e4m3) + per-output-channel scales, in place,
    one layer at a time (so the extra memory is one layer's experts). Returns the model."""
    if kind != "fp8":
        raise InputError(f"quantize_experts supports kind='fp8' (float8 e4m3, per-channel scales); got {kind!r}.")
    with torch.no_grad():
        for layer in model.layers:
            if not isinstance(layer.experts, Fp8Experts):
                layer.experts = Fp8Experts(layer.experts)
    return model


def is_quantized(model: DiffusionGemma) -> bool:
    return any(isinstance(layer.experts, Fp8Experts) for layer in model.layers)
