"""A transformer layer computed with the fused kernels: model.Layer.forward, same math, fewer kernels.

Per layer the PyTorch path runs ~35 small elementwise kernels for its seven RMSNorms, two residual
adds and the layer scalar; inside a CUDA graph there is no launch overhead left, but each small
kernel still costs a few microseconds of GPU time, 30 layers x 16 steps over. Here:
  x = x + post_attention_norm(attn(input_norm(x)))        -> 2 rmsnorm kernels (one with residual)
  x = (x + post_ff_norm(post_ff_norm_1(mlp) + post_ff_norm_2(moe))) * layer_scalar
                                                          -> 3 rmsnorm kernels (residual, scale)
  experts                                                 -> the fused MoE kernels
Attention, the dense MLP and the router are the model's own modules, called as they are.

`fused_layers(model, ops)` installs this forward on every layer for the duration of a `with`
block (an instance attribute that shadows Layer.forward), so model._run_layers runs unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch

from ..model import DiffusionGemma, Layer, rms_normalize
from .ops import Ops, experts_forward


def fused_layer_forward(layer: Layer, ops: Ops, x: torch.Tensor, rope, mask, cache, encoder: bool) -> torch.Tensor:
    eps = layer.input_layernorm.eps
    attn = layer.self_attn(ops.rmsnorm(x, layer.input_layernorm.weight, eps), rope, mask, cache)
    x = ops.rmsnorm(attn, layer.post_attention_layernorm.weight, eps, residual=x)
    # As Layer.forward: normalise once; the dense MLP, the router and the experts scale it their way.
    normed = rms_normalize(x, layer.pre_feedforward_layernorm.eps)
    dense = layer.mlp(layer.pre_feedforward_layernorm.scale(normed, like=x))
    flat, flat_normed = x.reshape(-1, x.shape[-1]), normed.reshape(-1, x.shape[-1])
    weights, experts = layer.router(flat, flat_normed)
    moe = experts_forward(ops, layer.experts, layer.pre_feedforward_layernorm_2.scale(flat_normed, like=flat),
                          weights, experts).view_as(x)
    dense = ops.rmsnorm(dense, layer.post_feedforward_layernorm_1.weight, eps)
    mixed = ops.rmsnorm(moe, layer.post_feedforward_layernorm_2.weight, eps, residual=dense)
    scalar = layer.encoder_layer_scalar if encoder else layer.layer_scalar
    return ops.rmsnorm(mixed, layer.post_feedforward_layernorm.weight, eps, residual=x, scale=scalar)


@contextmanager
def fused_layers(model: DiffusionGemma, ops: Ops):
    """Run every layer of `model` through fused_layer_forward inside the block."""
    for layer in model.layers:
        layer.forward = partial(fused_layer_forward, layer, ops)
    try:
        yield
    finally:
        for layer in model.layers:
            del layer.forward
