"""Our engine against transformers' DiffusionGemmaForBlockDiffusion: logits, then whole generations."""

from __future__ import annotations

import pytest
import torch
from conftest import left_padded
from transformers.cache_utils import DynamicCache
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

import dgemma_helpers as dg
from dgemma_helpers.cache import KVCache

REL_TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error ||a - b|| / ||b||."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def prompts(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [11, 6, 9][:batch]  # unequal: batch rows are left-padded
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def run_both(ref, model, batch: int, dtype: torch.dtype):
    """Prefill, two denoising steps (the second self-conditioned), commit, two more, in both engines."""
    V, L = model.config.vocab_size, model.config.canvas_length
    ids, mask = left_padded(prompts(batch, V))
    g = torch.Generator().manual_seed(1)
    canvases = [torch.randint(0, V, (batch, L), generator=g) for _ in range(4)]

    with torch.no_grad():
        cache = DynamicCache(config=ref.config.get_text_config(decoder=True))
        enc_mask = mask.bool()
        enc_ref = ref.model.encoder(input_ids=ids, attention_mask=enc_mask, cache=cache).last_hidden_state
        dec_mask = torch.nn.functional.pad(enc_mask, (0, L), value=True)
        r1 = ref(decoder_input_ids=canvases[0], cache=cache, decoder_attention_mask=dec_mask).logits
        r2 = ref(decoder_input_ids=canvases[1], cache=cache, decoder_attention_mask=dec_mask,
                 self_conditioning_logits=r1 / 0.7).logits
        enc_mask = torch.nn.functional.pad(enc_mask, (0, L), value=True)
        ref.model.encoder(input_ids=r2.argmax(-1), attention_mask=enc_mask, cache=cache)
        dec_mask = torch.nn.functional.pad(enc_mask, (0, L), value=True)
        r3 = ref(decoder_input_ids=canvases[2], cache=cache, decoder_attention_mask=dec_mask).logits
        r4 = ref(decoder_input_ids=canvases[3], cache=cache, decoder_attention_mask=dec_mask,
                 self_conditioning_logits=r3 / 0.5).logits

        kv = KVCache(model.config, batch, ids.shape[1] + L, device="cpu", dtype=dtype)
        enc_ours = model.encode(ids, kv, mask.bool())
        o1 = model.logits(model.denoise(canvases[0], kv))
        o2 = model.logits(model.denoise(canvases[1], kv, model.soft_embedding(o1 / 0.7)))
        model.encode(o2.argmax(-1), kv)
        o3 = model.logits(model.denoise(canvases[2], kv))
        o4 = model.logits(model.denoise(canvases[3], kv, model.soft_embedding(o3 / 0.5)))

    real = mask.bool()  # padded prompt positions hold no meaning in either engine
    return [(enc_ours[real], enc_ref[real]), (o1, r1), (o2, r2), (o3, r3), (o4, r4)]


@pytest.mark.parametrize("shape", ["confident", "ring"])
@pytest.mark.parametrize("batch", [1, 3])
def test_encoder_and_denoiser_logits_match(checkpoint, reference, ours, shape, batch):
    path = checkpoint(shape)
    for mine, theirs in run_both(reference(path), ours(path), batch, torch.float32):
        assert rel_err(mine, theirs) < REL_TOL


def test_float64_logits_are_identical_to_reference(checkpoint):
    """In float64 rounding noise vanishes, so any difference in the maths would show: there is none
    (our MoE takes its portable padded-bmm path here, transformers its eager loop)."""
    from transformers import DiffusionGemmaForBlockDiffusion

    path = checkpoint("ring")
    ref = DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=torch.float64,
                                                          experts_implementation="eager").eval()
    model = dg.load_model(path, device="cpu", dtype="float32").to(torch.float64)
    for mine, theirs in run_both(ref, model, 3, torch.float64):
        assert rel_err(mine, theirs) < 1e-12


def reference_generate(ref, ids, mask, seed, **settings):
    settings = dict(settings)
    settings["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=float(settings.pop("entropy_bound", 0.1)))
    if "eos_token_ids" in settings:
        settings["eos_token_id"] = list(settings.pop("eos_token_ids"))
    torch.manual_seed(seed)
    out = ref.generate(ids, attention_mask=mask, **settings)
    return out.sequences[:, ids.shape[1]:], out.tokens_per_forward.tolist()


@pytest.mark.parametrize("shape", ["confident", "ring"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("max_new_tokens", [16, 48])  # one canvas, three canvases
def test_near_greedy_generation_matches_token_for_token(checkpoint, reference, ours, shape, batch, max_new_tokens):
    """Same initial canvas, near-greedy temperatures: the ids must be identical."""
    path = checkpoint(shape)
    ref, model = reference(path), ours(path)
    V, L = model.config.vocab_size, model.config.canvas_length
    ids, mask = left_padded(prompts(batch, V, seed=2))
    start = torch.randint(0, V, (batch, L), generator=torch.Generator().manual_seed(9))
    settings = dict(max_new_tokens=max_new_tokens, max_denoising_steps=6, t_min=1e-3, t_max=2e-3, eos_token_ids=[])
    expected, expected_tpf = reference_generate(ref, ids, mask, seed=4, decoder_input_ids=start, **settings)
    result = dg.generate(model, input_ids=prompts(batch, V, seed=2), initial_canvas=start, seed=4, rng="transformers",
                         **settings)
    assert torch.equal(result.token_ids, expected[:, :max_new_tokens])
    assert result.row_canvas_tokens_per_forward == pytest.approx(expected_tpf)  # transformers' definition


@pytest.mark.parametrize("shape", ["plain", "ring"])
@pytest.mark.parametrize("batch", [1, 3])
def test_sampling_matches_reference_for_the_same_seed(checkpoint, reference, ours, shape, batch):
    """Default temperatures, rng="transformers": our generator draws what transformers draws from
    the global RNG, in the same order, so a seed gives the same tokens, EOS padding and tokens per
    forward."""
    path = checkpoint(shape)
    ref, model = reference(path), ours(path)
    V = model.config.vocab_size
    ids, mask = left_padded(prompts(batch, V, seed=5))
    settings = dict(max_new_tokens=40, max_denoising_steps=10, entropy_bound=0.5, eos_token_ids=[1, 5, 7, 11])
    expected, expected_tpf = reference_generate(ref, ids, mask, seed=11, **settings)
    result = dg.generate(model, input_ids=prompts(batch, V, seed=5), seed=11, rng="transformers", **settings)
    n = min(expected.shape[1], 40)
    assert torch.equal(result.token_ids[:, :n], expected[:, :n])
    assert result.row_canvas_tokens_per_forward == pytest.approx(expected_tpf)  # transformers' definition


def test_counter_rng_agrees_with_reference_on_a_greedy_canvas(checkpoint, reference, ours):
    """The default (counter) RNG draws other numbers, but where sampling is greedy and every position
    is accepted, the first canvas cannot depend on them."""
    path = checkpoint("confident")
    ref, model = reference(path), ours(path)
    V, L = model.config.vocab_size, model.config.canvas_length
    ids, mask = left_padded(prompts(3, V, seed=2))
    start = torch.randint(0, V, (3, L), generator=torch.Generator().manual_seed(9))
    settings = dict(max_new_tokens=L, max_denoising_steps=6, t_min=1e-5, t_max=2e-5, eos_token_ids=[])
    expected, _ = reference_generate(ref, ids, mask, seed=4, decoder_input_ids=start, **settings)
    result = dg.generate(model, input_ids=prompts(3, V, seed=2), initial_canvas=start, seed=123, **settings)
    assert torch.equal(result.token_ids, expected)


@pytest.mark.parametrize("rng", ["counter", "transformers"])
def test_seed_is_private_and_reproducible(checkpoint, ours, rng):
    model = ours(checkpoint("plain"))
    torch.manual_seed(0)
    before = torch.rand(3)
    a = dg.generate(model, input_ids=[5, 6, 7], seed=3, rng=rng, max_new_tokens=32, max_denoising_steps=4)
    torch.manual_seed(0)
    c = dg.generate(model, input_ids=[5, 6, 7], seed=99, rng=rng, max_new_tokens=32, max_denoising_steps=4)
    assert torch.equal(torch.rand(3), before)  # the global RNG was never touched
    b = dg.generate(model, input_ids=[5, 6, 7], seed=3, rng=rng, max_new_tokens=32, max_denoising_steps=4)
    assert torch.equal(a.token_ids, b.token_ids) and not torch.equal(a.token_ids, c.token_ids)


def test_batch_rows_equal_single_runs_under_near_greedy(checkpoint, ours):
    """Left padding must not change what a row generates."""
    model = ours(checkpoint("confident"))
    rows = prompts(3, model.config.vocab_size, seed=8)
    settings = dict(max_new_tokens=32, max_denoising_steps=5, t_min=1e-3, t_max=2e-3, eos_token_ids=[], seed=0)
    L = model.config.canvas_length
    start = torch.randint(0, model.config.vocab_size, (3, L), generator=torch.Generator().manual_seed(1))
    batch = dg.generate(model, input_ids=rows, initial_canvas=start, **settings)
    for i, row in enumerate(rows):
        single = dg.generate(model, input_ids=row, initial_canvas=start[i], **settings)
        assert torch.equal(single.token_ids[0, :L], batch.token_ids[i, :L])
