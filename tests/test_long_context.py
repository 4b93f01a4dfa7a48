"""Long contexts: a prompt of more than 32K tokens gives transformers' logits, within the memory
the kit estimates up front; the cache keeps one tensor per full-attention layer; a call that cannot
fit is refused before anything is allocated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dgemma_helpers as dg
from dgemma_helpers.cli import main as cli
from dgemma_helpers.config import FULL, SLIDING
from dgemma_helpers.devices import available_memory
from dgemma_helpers.memory import SLACK
from dgemma_helpers.model import attend
from dgemma_helpers.train.random_checkpoint import make_random_checkpoint

PROMPT = 33_000  # > 32K tokens, not a multiple of the prefill chunk
LAST = 8  # prompt positions whose logits are compared


@pytest.fixture(scope="module")
def long_checkpoint(tmp_path_factory) -> Path:
    # The test preset's window is 16: the sliding ring wraps thousands of times over the prompt.
    return make_random_checkpoint(tmp_path_factory.mktemp("long") / "ckpt", preset="test", seed=11, embed_std=1.0,
                                  max_position_embeddings=40_960, tokenizer=False)


def test_a_33k_token_prompt_gives_transformers_logits_within_the_estimate(long_checkpoint, tmp_path):
    from transformers import DiffusionGemmaForBlockDiffusion

    g = torch.Generator().manual_seed(0)
    config = dg.load_model(long_checkpoint, device="cpu", dtype="float32").config
    ids = torch.randint(3, config.vocab_size, (1, PROMPT), generator=g)
    canvas = torch.randint(0, config.vocab_size, (1, config.canvas_length), generator=g)
    torch.save({"ids": ids, "canvas": canvas, "last": LAST}, tmp_path / "inputs.pt")
    probe = Path(__file__).with_name("long_context_probe.py")
    subprocess.run([sys.executable, str(probe), str(long_checkpoint), str(tmp_path / "inputs.pt"),
                    str(tmp_path / "out.pt")], check=True, timeout=600)
    ours = torch.load(tmp_path / "out.pt")

    ref = DiffusionGemmaForBlockDiffusion.from_pretrained(long_checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        out = ref(input_ids=ids, decoder_input_ids=canvas)
        cap = ref.config.text_config.final_logit_softcapping
        prompt_logits = torch.tanh(ref.lm_head(out.encoder_last_hidden_state[:, -LAST:]).float() / cap) * cap
    torch.testing.assert_close(ours["prompt_logits"], prompt_logits, rtol=1e-5, atol=1e-5)
    # The denoiser's logits agree to float32 rounding: a relative error of a few 1e-6, as at a
    # 2,000-token prompt (both engines are that far from a float64 run), and the same argmax
    # wherever the top two are not tied.
    step, theirs = ours["step_logits"].double(), out.logits.double()
    assert ((step - theirs).norm() / theirs.norm()).item() < 1e-5
    top2 = theirs.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 1e-3
    assert torch.equal(step.argmax(-1)[clear], theirs.argmax(-1)[clear]) and clear.float().mean() > 0.9

    # Peak resident memory of the probe's work (the peak is reset just before it; an over-count:
    # freed pages are not always returned) stays within the estimate; and the estimate is not vacuous.
    assert ours["start_peak"] is not None, "this system does not report a resettable peak (/proc/self/clear_refs)"
    used = ours["peak"] - ours["start_rss"]
    assert used <= ours["working"], f"measured {used / 2**20:.0f} MiB > estimated {ours['working'] / 2**20:.0f} MiB"
    assert used >= ours["working"] / 8, f"estimate {ours['working'] / 2**20:.0f} MiB vs {used / 2**20:.0f} MiB used"
    assert ours["cache_nbytes"] == ours["kv_cache"]


def test_full_layers_keep_values_only_and_the_cache_size_is_what_is_estimated():
    config = dg.ModelConfig(vocab_size=100, hidden_size=32, intermediate_size=32, num_layers=6, num_heads=2,
                            sliding_kv_heads=2, sliding_head_dim=8, full_kv_heads=1, full_head_dim=16,
                            sliding_window=8, num_experts=2, top_k_experts=1, moe_intermediate_size=8,
                            canvas_length=4, max_position_embeddings=4096)
    cache = dg.KVCache(config, 2, 100, device="cpu", dtype=torch.bfloat16)
    for i, kind in enumerate(config.layer_types):
        assert (cache.keys[i] is None) == (kind == FULL)
        assert cache.values[i].shape[2] == (100 if kind == FULL else 7) + 4
    assert cache.nbytes() == dg.KVCache.bytes_needed(config, 2, 100, torch.bfloat16)
    # Past the window, a token costs the full layers' values alone.
    grow = dg.KVCache.bytes_needed(config, 1, 101, torch.bfloat16) - dg.KVCache.bytes_needed(config, 1, 100, torch.bfloat16)
    assert grow == dg.KVCache.bytes_per_token(config, torch.bfloat16) == 1 * 16 * 2
    assert SLIDING in config.layer_types


def test_the_official_configs_cache_at_256k():
    config = dg.ModelConfig()  # the published text config
    assert dg.KVCache.bytes_per_token(config, torch.bfloat16) == 5 * 2 * 512 * 2
    est = dg.estimate_memory(config, 262_144 - 256, dtype=torch.bfloat16)
    ring = 25 * 2 * 8 * 256 * (1023 + 256) * 2  # sliding layers: keys and values of the ring and the canvas
    assert est.kv_cache == 5 * 2 * 512 * 2 * (262_144 - 256 + 256) + ring


def test_a_call_that_cannot_fit_is_refused_before_anything_is_allocated(tmp_path):
    # Wide full-attention heads: 32 KiB of cache per token and row, 32 rows of 260K tokens = 254 GiB.
    path = make_random_checkpoint(tmp_path / "wide", preset="test", max_position_embeddings=262_144,
                                  global_head_dim=2048, num_global_key_value_heads=4, tokenizer=False)
    model = dg.load_model(path, device="cpu", dtype="float32")
    ids = torch.full((32, 260_000), 7)
    with pytest.raises(dg.DeviceError, match=r"needs about .* GiB of working memory on cpu .* only .* free: "
                                             r"shorten the prompt, give fewer prompts"):
        dg.generate(model, input_ids=ids, max_new_tokens=16)
    est = dg.estimate_memory(model, 260_000, batch_size=32, max_new_tokens=16)
    assert est.kv_cache > 250 * 2**30


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt_tokens=0), "prompt_tokens must be an int >= 1"),
    (dict(prompt_tokens=10, batch_size=1.5), "batch_size must be an int"),
    (dict(prompt_tokens=10, max_new_tokens=True), "max_new_tokens must be an int"),
])
def test_estimate_inputs_are_checked(kwargs, message):
    with pytest.raises(dg.InputError, match=message):
        dg.estimate_memory(dg.ModelConfig(), **kwargs)


def test_the_memory_command_prints_the_breakdown(capsys):
    assert cli(["memory", "--model", "models/dgemma-tiny", "--prompt-tokens", "32768"]) == 0
    out = capsys.readouterr().out
    for line in ("KV cache", "prefill peak", "denoise peak", "working memory", "weights", "per further token"):
        assert line in out


def test_repeating_grouped_kv_heads_gives_the_grouped_attention():
    """model.attend repeats the KV heads where CUDA's masked kernels take no grouped heads (a long
    prefill chunk); both forms are the same attention, here compared on the CPU."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 40, 16, generator=g)
    keys, values = torch.randn(2, 2, 70, 16, generator=g), torch.randn(2, 2, 70, 16, generator=g)
    mask = torch.rand(2, 1, 40, 70, generator=g) > 0.3
    torch.testing.assert_close(attend(q, keys, values, mask, expand=True), attend(q, keys, values, mask, expand=False),
                               rtol=1e-6, atol=1e-6)
    # The CUDA estimate counts the cheaper of repeated heads and the math kernel's scores; the CPU's neither.
    config = dg.ModelConfig()
    gpu, cpu = (dg.estimate_memory(config, 131_072, device=d) for d in ("cuda", "cpu"))
    repeated = 16 * 131_072 * 2 * 512 * 2  # a full layer's keys and values, repeated to 16 heads, bf16
    assert gpu.prefill - cpu.prefill == pytest.approx(SLACK * repeated, rel=1e-6)
    assert gpu.kv_cache == cpu.kv_cache


def test_free_gpu_memory_counts_what_the_allocator_caches(monkeypatch):
    """An earlier call's blocks stay reserved by PyTorch's caching allocator: the next call's check
    must count them as free, or a second long-context call would be refused (CUDA stubbed here)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 20 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 4 * 2**30)
    assert available_memory(torch.device("cuda")) == (10 + 20 - 4) * 2**30
