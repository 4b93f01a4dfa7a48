"""What bench/gpu_check.py and bench/gpu_step.py share: the official and small configs in
transformers' terms, random models built on the device, output poisoning, timing. Their `--cpu` /
`--tiny` modes run the same code under the Triton interpreter."""

from __future__ import annotations

import contextlib
import json
import os
import time

import torch

from ..atomic import atomic_write
from ..config import ModelConfig
from ..devices import synchronize
from ..model import DiffusionGemma, init_weights

# The official checkpoint's text config in transformers' terms.
REAL_HF = dict(vocab_size=262144, hidden_size=2816, intermediate_size=2112, num_hidden_layers=30,
               num_attention_heads=16, num_key_value_heads=8, head_dim=256, global_head_dim=512,
               num_global_key_value_heads=2, num_experts=128, top_k_experts=8, moe_intermediate_size=704,
               sliding_window=1024, max_position_embeddings=262144, final_logit_softcapping=30.0,
               attention_k_eq_v=True, enable_moe_block=True)
# Small enough for the Triton interpreter (it runs a kernel's program instances one by one in numpy).
CPU_HF = dict(REAL_HF, vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=6,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
              num_global_key_value_heads=1, num_experts=8, top_k_experts=2, moe_intermediate_size=32)


def setup_cpu_interpreter() -> None:
    """Must run before any kernels.* import: triton.jit reads TRITON_INTERPRET at decoration."""
    os.environ["TRITON_INTERPRET"] = "1"


def model_config(hf: dict, canvas: int, layers: int | None = None) -> ModelConfig:
    text = dict(hf, num_hidden_layers=layers or hf["num_hidden_layers"])
    return ModelConfig.from_hf({"model_type": "diffusion_gemma", "canvas_length": canvas,  # at the top level
                                "text_config": text})


def random_model(config: ModelConfig, device: str, dtype: torch.dtype, seed: int = 0) -> DiffusionGemma:
    """Random weights created directly on the device in `dtype` (no CPU copy, no fp32 detour)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = DiffusionGemma(config)
    finally:
        torch.set_default_dtype(prev)
    init_weights(model, generator=torch.Generator(device).manual_seed(seed))
    return model.eval()


@contextlib.contextmanager
def poisoned_outputs():
    """Every torch.empty / empty_like inside the block returns NaN (floats) or -1 (ints): an element
    a kernel forgot to write shows up in the comparison."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-1)

    torch.empty = lambda *a, **k: poison(empty(*a, **k))
    torch.empty_like = lambda *a, **k: poison(empty_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def time_it(fn, device, warm: int = 1, reps: int = 5) -> float:
    """Median seconds of fn() over reps, after warm-up runs."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        synchronize(torch.device(device))
        t = time.perf_counter()
        fn()
        synchronize(torch.device(device))
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def environment(device: str) -> dict:
    import transformers

    info = dict(torch=torch.__version__, transformers=transformers.__version__, device=device)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), capability=".".join(map(str, torch.cuda.get_device_capability())),
                    cuda=torch.version.cuda)
    return info


def write_json(path: str | None, payload: dict) -> None:
    if path:
        atomic_write(path, json.dumps(payload, indent=2, default=str))
