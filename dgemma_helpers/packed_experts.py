"""The experts on a CPU: each expert's two matrices prepacked once into oneDNN's blocked layout.

A CPU GEMM first reorders its weight matrix into the blocked layout its kernel reads. For a big
batch that costs little, but an expert sees few tokens per canvas (256 tokens x top-8 over 128
experts: 16 each), so a plain per-expert GEMM spends about as long reordering the expert's 8 MB as
multiplying with it. Packing every expert once and reusing the packed copies makes the experts of
the official width about 1.5x faster in bfloat16 and 3x in float32 than per-expert GEMMs (and
than transformers' grouped_mm, which loops the same way).

The packed copies sit beside the model's own weights (the parameters stay what they are, for
training, saving and moving the model): they cost the experts' size again, so they are made only
where that memory is free, and remade when a weight changes in place (an optimizer step bumps the
tensors' version counters). Inference only: oneDNN's packed GEMM has no backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .devices import available_memory

_PACK = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None) if torch.backends.mkldnn.is_available() else None
TOKENS_HINT = 32  # the batch size oneDNN packs for: a few more tokens than an expert's share of a canvas
# Below this many weights per expert matrix (the official model's gate_up has 4M) the reorder is cheap
# and one padded batched GEMM over all experts beats a pair of calls per expert (the toy: 3x faster).
MIN_WEIGHTS = 1 << 20


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Packed GEMMs serve this call: a CPU, oneDNN present, no gradient, float32 or bfloat16, and
    experts big enough for the reorder to matter."""
    return (_PACK is not None and x.device.type == "cpu" and not torch.is_grad_enabled()
            and weight[0].numel() >= MIN_WEIGHTS
            and weight.dtype in (torch.float32, torch.bfloat16)
            and (weight.dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()))


class PackedExperts:
    """Packed copies of one layer's experts, with the versions of the weights they were made from."""

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor) -> None:
        self.source = _signature(gate_up, down)
        with torch.no_grad():
            self.gate_up = [_PACK(w, TOKENS_HINT) for w in gate_up]
            self.down = [_PACK(w, TOKENS_HINT) for w in down]

    @classmethod
    def of(cls, cached: PackedExperts | None, gate_up: torch.Tensor, down: torch.Tensor) -> PackedExperts | None:
        """`cached` if it still matches the weights, else new copies, or None where memory is short."""
        if cached is not None and cached.source == _signature(gate_up, down):
            return cached
        del cached  # let the stale copies go before making new ones
        free = available_memory(gate_up.device)
        need = sum(t.numel() * t.element_size() for t in (gate_up, down))
        if free is not None and 2 * need > free:
            return None
        return cls(gate_up, down)

    def __call__(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Experts.forward's result: (token, expert) pairs sorted by expert, two GEMMs per expert."""
        top_k = experts.shape[1]
        flat = experts.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // top_k
        counts = torch.bincount(flat, minlength=len(self.gate_up)).tolist()  # one host read per layer
        pairs = x.index_select(0, token)
        out = torch.empty_like(pairs)
        start = 0
        for e, n in enumerate(counts):
            if n:
                rows = pairs[start:start + n]
                gate, up = _linear(rows, self.gate_up[e]).chunk(2, dim=-1)
                out[start:start + n] = _linear(F.gelu(gate, approximate="tanh") * up, self.down[e])
                start += n
        out = out * weights.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add_(0, token, out.to(x.dtype))


def _linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [None], "")


def _signature(*tensors: torch.Tensor) -> tuple:
    return tuple((t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for t in tensors)
