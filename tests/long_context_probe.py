"""Run by tests/test_long_context.py in a fresh process, so that its peak memory is this work's alone:
load a checkpoint (float32, CPU), encode a long prompt with the kit's chunked prefill, run the
first denoising step on a given canvas, and write the logits, the peak and the estimate to OUT.

    python tests/long_context_probe.py CHECKPOINT INPUTS.pt OUT.pt
"""

from __future__ import annotations

import sys

import torch

import dgemma_helpers as dg
from dgemma_helpers.benchmarks.measure import resident_now, resident_peak
from dgemma_helpers.generation import prefill
from dgemma_helpers.memory import cache_capacity


def main(checkpoint: str, inputs: str, out: str) -> None:
    torch.set_grad_enabled(False)
    model = dg.load_model(checkpoint, device="cpu", dtype="float32")
    data = torch.load(inputs)
    ids, canvas, last = data["ids"], data["canvas"], data["last"]
    config, P = model.config, ids.shape[1]
    estimate = dg.estimate_memory(model, P, max_new_tokens=config.canvas_length, probabilities=True)
    start, start_peak = resident_now(), resident_peak(reset=True)
    cache = dg.KVCache(config, 1, cache_capacity(config, P, config.canvas_length), device="cpu", dtype=model.dtype)
    hidden = prefill(model, ids, cache)
    prompt_logits = model.logits(hidden[:, -last:])
    step_logits = model.logits(model.denoise(canvas, cache))
    torch.save({"prompt_logits": prompt_logits, "step_logits": step_logits, "start_rss": start,
                "start_peak": start_peak, "peak": resident_peak(), "working": estimate.working,
                "kv_cache": estimate.kv_cache, "cache_nbytes": cache.nbytes()}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
