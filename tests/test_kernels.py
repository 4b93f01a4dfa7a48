"""The Triton kernels against their PyTorch references. On a CPU they run under the Triton
interpreter (TRITON_INTERPRET=1, set here before any kernel module is imported), in float32 on
small shapes; on a GPU, bench/gpu_check.py does the same on real shapes in bf16."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed: pip install -e '.[dev]' brings it (CPU interpreter)")

from dgemma_kernels.denoise_head import denoise_head, tiles_per_chunk  # noqa: E402
from dgemma_kernels.denoise_head_ref import reference_denoise_head  # noqa: E402
from dgemma_kernels.moe import moe  # noqa: E402
from dgemma_kernels.moe_ref import reference_moe  # noqa: E402
from dgemma_kernels.rmsnorm import rmsnorm  # noqa: E402
from dgemma_kernels.rmsnorm_ref import reference_rmsnorm  # noqa: E402

import dgemma_helpers as dg  # noqa: E402
from dgemma_helpers.head import tiled_head  # noqa: E402
from dgemma_helpers.fast.quant import Fp8Experts, quantize_experts, quantize_fp8  # noqa: E402
from dgemma_helpers.rng import SAMPLE_STREAM, CounterRNG  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("width", [64, 100])
def test_rmsnorm_matches_reference(width):
    g = gen(0)
    x, res = torch.randn(2, 5, width, generator=g), torch.randn(2, 5, width, generator=g)
    w, scale = 1 + 0.2 * torch.randn(width, generator=g), torch.tensor([0.7])
    for kw in ({}, dict(residual=res), dict(residual=res, scale=scale)):
        out = rmsnorm(x.to(DEV), w.to(DEV), 1e-6, **{k: v.to(DEV) for k, v in kw.items()}).cpu()
        assert out.shape == x.shape
        torch.testing.assert_close(out, reference_rmsnorm(x, w, 1e-6, **kw), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rmsnorm(x.to(DEV), None, 1e-6).cpu(), reference_rmsnorm(x, None, 1e-6),
                               atol=1e-6, rtol=1e-5)


def test_rmsnorm_is_model_rmsnorm(checkpoint, ours):
    layer = ours(checkpoint("plain")).layers[0]
    x = torch.randn(3, layer.input_layernorm.weight.shape[0], generator=gen(1))
    with torch.no_grad():
        expected = x + layer.post_attention_layernorm(x * 2)
        got = rmsnorm(x * 2, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.eps, residual=x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def _moe_inputs(T=37, H=48, E=6, I=40, k=2, seed=0):
    g = gen(seed)
    x = torch.randn(T, H, generator=g)
    gate_up, down = torch.randn(E, 2 * I, H, generator=g) * 0.1, torch.randn(E, H, I, generator=g) * 0.1
    experts = torch.stack([torch.randperm(E - 1, generator=g)[:k] for _ in range(T)])  # expert E-1 gets no token
    weights = torch.rand(T, k, generator=g)
    return x, weights, experts, gate_up, down


def test_moe_matches_reference():
    x, weights, experts, gate_up, down = _moe_inputs()
    out = moe(*(t.to(DEV) for t in (x, weights, experts, gate_up, down))).cpu()
    torch.testing.assert_close(out, reference_moe(x, weights, experts, gate_up, down), atol=1e-5, rtol=1e-4)


def test_moe_matches_the_models_experts(checkpoint, ours):
    layer = ours(checkpoint("ring")).layers[1]  # 12 experts, top-3
    x = torch.randn(29, layer.experts.gate_up_proj.shape[2], generator=gen(2))
    with torch.no_grad():
        weights, experts = layer.router(x)
        expected = layer.experts(x, weights, experts)
        got = moe(x, weights, experts, layer.experts.gate_up_proj, layer.experts.down_proj)
    assert rel_err(got, expected) < 1e-5


def test_moe_fp8_weights():
    x, weights, experts, gate_up, down = _moe_inputs(seed=1)
    (gq, gs), (dq, ds) = quantize_fp8(gate_up), quantize_fp8(down)
    out = moe(x, weights, experts, gq, dq, gs, ds)
    assert rel_err(out, reference_moe(x, weights, experts, gq, dq, gs, ds)) < 1e-5  # the kernel: exact dequant
    assert rel_err(out, reference_moe(x, weights, experts, gate_up, down)) < 0.1  # e4m3: 3 mantissa bits


def _head_inputs(N=40, H=48, V=1000, seed=0, scale=3.0):
    g = gen(seed)
    return torch.randn(N, H, generator=g) * scale, torch.randn(V, H, generator=g) * 0.5


@pytest.mark.parametrize("temperature", [0.8, 0.1])
def test_denoise_head_matches_reference(temperature):
    hidden, embed = _head_inputs()  # vocab 1000 = 16 tiles of 64 in 4 chunks, the last one partial
    t, key = torch.tensor([temperature]), CounterRNG(7, batch=2).keys(SAMPLE_STREAM, 0, 1)  # 40 positions: 2 rows
    scale = torch.tensor(embed.shape[1] ** 0.5)
    got = denoise_head(hidden, embed, t, key, 30.0, scale)
    ref = reference_denoise_head(hidden, embed, t, key, 30.0, scale)
    assert torch.equal(got.argmax, ref.argmax)
    assert torch.equal(got.sample, ref.sample)
    torch.testing.assert_close(got.entropy, ref.entropy, atol=2e-5, rtol=1e-4)
    assert (got.entropy >= 0).all()
    assert rel_err(got.soft, ref.soft) < 1e-5


def test_denoise_head_is_the_models_head_and_counter_rng(checkpoint, ours):
    """Argmax, entropy and soft embedding equal head.tiled_head's; at accepted positions the
    kernel's sample is CounterRNG's draw, draw for draw."""
    model = ours(checkpoint("plain"))
    B, L, H = 2, model.config.canvas_length, model.config.hidden_size
    hidden = torch.randn(B, L, H, generator=gen(3)) * 3
    with torch.no_grad():
        ref = tiled_head(model, hidden, 0.6)
        rng = CounterRNG([11, 12], batch=B)
        got = denoise_head(hidden.view(B * L, H), model.embed_tokens.weight, torch.tensor([0.6]),
                           rng.keys(SAMPLE_STREAM, 2, 5), model.config.final_logit_softcapping, model.embed_scale)
        accepted = torch.rand(B, L, generator=gen(4)) < 0.5
        drawn = rng.sample(model, ref, accepted, canvas=2, step=5)
    assert torch.equal(got.argmax.view(B, L), ref.argmax)
    torch.testing.assert_close(got.entropy.view(B, L), ref.entropy, atol=2e-5, rtol=1e-4)
    assert rel_err(got.soft.view(B, L, H), ref.soft) < 1e-5
    assert torch.equal(got.sample.view(B, L)[accepted], drawn[accepted])


def test_denoise_head_samples_follow_softmax():
    """Chi-square: the kernel's draws at many positions with the same logits match softmax(z)."""
    g = gen(5)
    embed = torch.randn(6, 16, generator=g)
    hidden = (torch.randn(1, 16, generator=g) * 2).expand(3000, 16).contiguous()
    got = denoise_head(hidden, embed, torch.tensor([1.0]), torch.tensor([12345]), 30.0, torch.tensor(4.0))
    z = torch.tanh((hidden[0] @ embed.T) / 30) * 30
    probs = torch.softmax(z.double(), 0)
    counts = torch.bincount(got.sample, minlength=6).double()
    expected = probs * hidden.shape[0]
    keep = expected > 5  # chi-square needs enough expected counts per cell
    chi2 = (((counts - expected) ** 2 / expected)[keep]).sum().item()
    assert chi2 < 20.5  # <= 5 degrees of freedom, p = 0.001
    assert torch.equal(got.argmax, z.argmax().expand(3000))


def test_fast_generate_with_triton_kernels_matches_torch_path(checkpoint, ours):
    """The whole fast step with the Triton kernels (interpreter on a CPU): same tokens."""
    model = ours(checkpoint("confident"))
    kw = dict(input_ids=[[5, 6, 7, 8, 9], [3, 4, 5]], seed=2, max_new_tokens=model.config.canvas_length,
              max_denoising_steps=3)
    a = dg.generate(model, path="torch", **kw)
    b = dg.generate(model, path="fast", **kw)
    assert torch.equal(a.token_ids, b.token_ids)


def test_fp8_experts_logit_error(checkpoint, ours, tmp_path):
    """FP8 expert weights (quantised at load time) change the logits, boundedly. On this untrained
    random checkpoint the norm-wise error is ~0.20 (e4m3 keeps 3 mantissa bits: ~4% per expert
    output, compounded over 6 layers of a net whose MoE dominates the residual stream); a trained
    model's error is measured by bench/gpu_check.py --fp8."""
    path = checkpoint("plain")
    model, q = ours(path), dg.load_model(path, device="cpu", dtype="float32")
    quantize_experts(q)
    assert all(isinstance(layer.experts, Fp8Experts) for layer in q.layers)
    ids = torch.randint(3, model.config.vocab_size, (1, 9), generator=gen(6))
    with torch.no_grad():
        logits = []
        for m in (model, q):
            cache = dg.KVCache(m.config, 1, 9, device="cpu", dtype=torch.float32)
            m.encode(ids, cache)
            logits.append(m.logits(m.denoise(ids.new_zeros(1, m.config.canvas_length) + 7, cache)))
    err = rel_err(logits[1], logits[0])
    assert 0 < err < 0.35


@pytest.mark.parametrize("l2_mb", [50, 128])
@pytest.mark.parametrize("batch", [1, 4, 8])
def test_head_chunks_fit_half_the_l2_cache(l2_mb, batch):
    """A chunk's embedding rows, probabilities and the hidden states take at most half the L2
    (so the soft kernel re-reads them from L2, not memory), within 1K to 16K tokens."""
    N, H, l2 = 256 * batch, 2816, l2_mb * 2**20
    tokens = tiles_per_chunk(N, H, 2, 64, l2) * 64
    assert 1024 <= tokens <= 16384
    assert (tokens * H + N * tokens + N * H) * 2 <= l2 // 2 or tokens == 1024
    assert tiles_per_chunk(N, H, 2, 64, 10**12) * 64 == 16384  # a huge cache: the largest chunk
