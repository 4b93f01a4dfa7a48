"""Fine-tuning (dgemma_helpers/sft): the objective against transformers, adapters through peft onto
transformers' model, merging, frozen weights, resuming, the CLI, and every bad input's error."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

from test_checkpoint import denoise_logits

import dgemma_helpers as dg
from dgemma_helpers.cli import main
from dgemma_helpers.errors import CheckpointError, DeviceError, InputError
from dgemma_helpers.sft.data import encode_examples, make_batch, read_conversations
from dgemma_helpers.sft.loop import finetune, merge_checkpoint
from dgemma_helpers.sft.lora import add_lora, load_adapter, lora_config, merge, save_adapter
from dgemma_helpers.train.objective import corrupt, diffusion_loss
from dgemma_helpers.train.random_checkpoint import make_random_checkpoint

WORDS = ["apple", "river", "stone", "cloud", "ember", "maple", "frost", "cedar", "amber", "coral"]


def chats(n: int, offset: int = 0) -> list[list[dict]]:
    """A task with a fixed answer format: 'Name the word' -> 'The word is W.'"""
    out = []
    for i in range(offset, offset + n):
        w = WORDS[i % len(WORDS)]
        out.append([{"role": "user", "content": f"Say {w} back to me, please."},
                    {"role": "assistant", "content": f"The word is {w}, and that is all."}])
    return out


def rand_lora(model, seed: int = 0):
    """Non-zero B matrices: a fresh adapter computes nothing, which would prove nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_diffusion_term_equals_transformers_for_the_same_canvas_cache_and_labels(checkpoint, reference):
    from transformers.cache_utils import DynamicCache

    path = checkpoint("ring")
    model, ref = dg.load_model(path, device="cpu", dtype="float32"), reference(path)
    C, V = model.config.canvas_length, model.config.vocab_size
    tokens = torch.randint(10, V, (1, 40), generator=torch.Generator().manual_seed(0))
    b = 13
    block_mask = torch.ones(1, C)
    block_mask[0, 11:] = 0  # the end of the reply inside the canvas: padding after it is not counted
    t = torch.tensor([0.6])
    with torch.no_grad():
        mine = diffusion_loss(model, tokens, torch.tensor([b]), generator=torch.Generator().manual_seed(5), t=t,
                              block_mask=block_mask).diffusion
        g = torch.Generator().manual_seed(5)  # the same draws, in the objective's order
        clean = tokens[:, b: b + C]
        noisy = corrupt(clean, t, V, g)
        use_sc = torch.rand(1, generator=g) < 0.5
        cache = DynamicCache(config=ref.config.get_text_config(decoder=True))
        ref.model.encoder(input_ids=tokens[:, :b], cache=cache)
        first = ref(decoder_input_ids=noisy, cache=cache).logits
        second = ref(decoder_input_ids=noisy, cache=cache, self_conditioning_logits=first,
                     self_conditioning_mask=use_sc).logits
        terms = torch.nn.functional.cross_entropy(second[0], clean[0], reduction="none")
        theirs = (terms * block_mask[0]).sum() / block_mask.sum()
    assert abs(mine.item() - theirs.item()) < 1e-4 * theirs.item()


def test_adapter_loads_with_peft_onto_transformers_and_merges_into_a_checkpoint(checkpoint, tmp_path):
    from peft import PeftModel
    from transformers import DiffusionGemmaForBlockDiffusion

    path = checkpoint("confident")
    model = rand_lora(add_lora(dg.load_model(path, device="cpu", dtype="float32"), lora_config(rank=4)))
    adapter = save_adapter(model, tmp_path / "adapter", base=str(path))
    assert {p.name for p in adapter.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    canvas = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(1))
    prompt = [2, 9, 8, 7, 6, 5]
    mine = denoise_logits(model, prompt, canvas)
    assert not torch.allclose(mine, denoise_logits(dg.load_model(path, device="cpu", dtype="float32"), prompt, canvas))

    from transformers.cache_utils import DynamicCache

    ref = DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(ref, adapter).eval()
    with torch.no_grad():
        cache = DynamicCache(config=ref.config.get_text_config(decoder=True))
        peft_model.base_model.model.model.encoder(input_ids=torch.tensor([prompt]), cache=cache)
        theirs = peft_model(decoder_input_ids=canvas, cache=cache).logits
    assert ((mine - theirs).norm() / theirs.norm()).item() < 1e-5

    reloaded = load_adapter(dg.load_model(path, device="cpu", dtype="float32"), adapter)
    assert torch.equal(denoise_logits(reloaded, prompt, canvas), mine)

    merged_path = tmp_path / "merged"
    merge_checkpoint(reloaded, merged_path)
    assert not any("lora" in n for n in reloaded.state_dict())
    merged = dg.load_model(merged_path, device="cpu", dtype="float32")
    assert ((denoise_logits(merged, prompt, canvas) - mine).norm() / mine.norm()).item() < 1e-5
    ref_merged = DiffusionGemmaForBlockDiffusion.from_pretrained(merged_path, dtype=torch.float32).eval()
    with torch.no_grad():
        cache = DynamicCache(config=ref_merged.config.get_text_config(decoder=True))
        ref_merged.model.encoder(input_ids=torch.tensor([prompt]), cache=cache)
        theirs_merged = ref_merged(decoder_input_ids=canvas, cache=cache).logits
    assert ((theirs_merged - mine).norm() / mine.norm()).item() < 1e-5
    with pytest.raises(InputError, match="not empty"):
        merge_checkpoint(load_adapter(dg.load_model(path, device="cpu", dtype="float32"), adapter), merged_path)


def test_an_adapter_for_another_base_model_is_refused(checkpoint, tmp_path):
    model = add_lora(dg.load_model(checkpoint("confident"), device="cpu", dtype="float32"), lora_config(rank=4))
    adapter = save_adapter(model, tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="another base model"):
        load_adapter(dg.load_model(checkpoint("ring"), device="cpu", dtype="float32"), adapter)
    with pytest.raises(CheckpointError, match="not a peft adapter"):
        load_adapter(dg.load_model(checkpoint("ring"), device="cpu", dtype="float32"), tmp_path)


def test_only_the_adapters_train_and_a_short_run_lowers_the_heldout_loss(checkpoint):
    model = dg.load_model(checkpoint("plain"), device="cpu", dtype="float32")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, history = finetune(model, chats(10), heldout=chats(4, offset=3), steps=30, lr=3e-3, rank=8, warmup=2,
                              eval_every=30, progress=False)
    after = dict(model.named_parameters())
    for name, old in before.items():
        now = after[name] if name in after else after[name.replace(".weight", ".base_layer.weight")]
        assert torch.equal(old, now), name  # the router and every frozen weight are bit-identical
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in after.items())
    first = finetune(dg.load_model(checkpoint("plain"), device="cpu", dtype="float32"), chats(10),
                     heldout=chats(4, offset=3), steps=1, lr=0.0, eval_every=1, progress=False)[1][-1]
    assert history[-1]["heldout_diffusion"] < first["heldout_diffusion"] - 0.3
    assert history[-1]["heldout_lm"] < first["heldout_lm"]


def test_full_fine_tuning_keeps_the_router_frozen(checkpoint):
    model = dg.load_model(checkpoint("plain"), device="cpu", dtype="float32")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, _ = finetune(model, chats(4), steps=2, full=True, lr=1e-3, warmup=1, progress=False)
    for name, p in model.named_parameters():
        assert torch.equal(before[name], p) == (".router." in name), name


def test_resume_after_ctrl_c_equals_an_uninterrupted_run_bit_for_bit(checkpoint, tmp_path, monkeypatch):
    path = checkpoint("plain")
    settings = dict(steps=5, lr=1e-3, rank=4, warmup=1, save_every=100, heldout=chats(2, offset=5), eval_every=2,
                    progress=False)
    straight, history = finetune(dg.load_model(path, device="cpu", dtype="float32"), chats(6),
                                 out=tmp_path / "a", **settings)

    from dgemma_helpers.sft import loop

    real, calls = loop.make_batch, []

    def interrupt_third(*args, canvas_index=None, **kwargs):
        calls.append(canvas_index is None)  # a training batch, not the held-out one
        if sum(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, canvas_index=canvas_index, **kwargs)

    monkeypatch.setattr(loop, "make_batch", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        finetune(dg.load_model(path, device="cpu", dtype="float32"), chats(6), out=tmp_path / "b", **settings)
    assert json.loads((tmp_path / "b" / "state" / "state.json").read_text())["step"] == 2
    monkeypatch.setattr(loop, "make_batch", real)
    with pytest.raises(InputError, match="resume"):
        finetune(dg.load_model(path, device="cpu", dtype="float32"), chats(6), out=tmp_path / "b", **settings)
    resumed, history_b = finetune(dg.load_model(path, device="cpu", dtype="float32"), chats(6), out=tmp_path / "b",
                                  resume=True, **settings)
    a, b = dict(straight.named_parameters()), dict(resumed.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in history_b]
    from safetensors.torch import load_file

    sa, sb = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in "ab")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_assistant_header_is_never_supervised():
    from tokenizers import AddedToken

    from dgemma_helpers.tokenizer import train_tokenizer

    tiny = dg.load_model("models/dgemma-tiny", device="cpu")
    # The official Gemma 4 template's turn markers, in a short template of the same shape.
    official = train_tokenizer(["Say apple back to me. The word is apple."] * 20, 300)
    official.add_special_tokens({"additional_special_tokens": [AddedToken("<|turn>"), AddedToken("<turn|>")]})
    official.chat_template = ("{{ bos_token }}{% for m in messages %}<|turn>{{ 'model' if m['role'] == 'assistant' "
                              "else m['role'] }}\n{{ m['content'] | trim }}<turn|>\n{% endfor %}"
                              "{% if add_generation_prompt %}<|turn>model\n{% endif %}")
    official_config = tiny.config.__class__(**{**tiny.config.__dict__, "eos_token_ids": (
        official.convert_tokens_to_ids("<turn|>"),)})
    conversation = [{"role": "system", "content": "Be brief."}, *chats(1)[0][:1],
                    {"role": "assistant", "content": "Earlier."}, *chats(1)[0]]
    for tokenizer, config, header, end in ((tiny.tokenizer, tiny.config, "<start_of_turn>model\n", "<end_of_turn>"),
                                           (official, official_config, "<|turn>model\n", "<turn|>")):
        example = encode_examples([("x", conversation)], tokenizer, config)[0]
        batch = make_batch([example], config.canvas_length, 0, canvas_index=[0])
        supervised = [t for t, m in zip(batch.tokens[0, 1:].tolist(), batch.lm_mask[0].tolist()) if m]
        text = tokenizer.decode(supervised, skip_special_tokens=False)
        assert text == "The word is apple, and that is all." + end, text
        assert not tokenizer.decode(example.ids[example.reply_start:]).startswith(header)
        assert tokenizer.decode(example.ids[: example.reply_start], skip_special_tokens=False).endswith(header)
        assert int(batch.block_mask.sum()) == len(supervised)


@pytest.mark.parametrize("content, match", [
    ("", "holds no examples"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [\n', "line 2 of .*data.jsonl is not valid JSON"),
    ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}', "message 0 \\(user\\) has no content"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "has no assistant turn"),
    (('{"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "?"}]},'
      ' {"role": "assistant", "content": "x"}]}'), "image"),
])
def test_bad_data_is_refused_naming_the_line_and_the_fix(tmp_path, content, match):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    with pytest.raises(InputError, match=match):
        read_conversations(data)


def test_too_long_examples_and_checkpoint_outputs_are_refused(checkpoint, tmp_path):
    path = checkpoint("plain")
    model = dg.load_model(path, device="cpu", dtype="float32")
    long = [[{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]]
    with pytest.raises(InputError, match="example 0: the example takes .* more than the 64"):
        finetune(model, long, max_tokens=64, progress=False)
    with pytest.raises(InputError, match="holds a model checkpoint"):
        finetune(model, chats(2), out=path, progress=False)
    assert (path / "model.safetensors").exists()


def test_a_run_the_device_cannot_hold_is_refused_before_allocating(checkpoint, monkeypatch):
    model = dg.load_model(checkpoint("plain"), device="cpu", dtype="float32")
    monkeypatch.setattr("dgemma_helpers.memory.available_memory", lambda device: 2**20)
    with pytest.raises(DeviceError, match="lower batch_size"):
        finetune(model, chats(2), progress=False)
    assert not any("lora" in n for n in model.state_dict())


def test_training_memory_estimate_counts_each_part():
    from dgemma_helpers.config import ModelConfig

    official = ModelConfig()
    estimates = [dg.estimate_memory(official, n, training="lora") for n in (1024, 2048, 4096)]
    assert all(e.weights == estimates[0].weights and 45 * 2**30 < e.weights < 50 * 2**30 for e in estimates)
    assert estimates[0].activations < estimates[1].activations < estimates[2].activations
    assert estimates[1].total < 96e9  # the goal: LoRA SFT at 2K tokens on one 96 GB card
    assert dg.estimate_memory(official, 2048, training="lora+experts").trainable > estimates[1].trainable
    with pytest.raises(InputError, match="training must be one of"):
        dg.estimate_memory(official, 2048, training="qlora")


def test_cli_finetunes_resumes_and_merges(checkpoint, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats(4)))
    args = ["finetune", "--model", str(checkpoint("plain")), "--data", str(data), "--out", str(tmp_path / "run"),
            "--steps", "2", "--rank", "4"]
    assert main(args) == 0
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    assert main(args) == 2 and "--resume" in capsys.readouterr().err
    assert main([*args[:-2], "--rank", "8", "--resume"]) == 2
    assert "another model or settings" in capsys.readouterr().err
    assert main([*args[:-4], "--steps", "3", "--rank", "4", "--resume", "--merge", str(tmp_path / "merged")]) == 0
    assert json.loads((tmp_path / "run" / "state" / "state.json").read_text())["step"] == 3
    assert dg.load_model(tmp_path / "merged", device="cpu").config == dg.load_model(checkpoint("plain")).config
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main([*args[:4], str(empty), "--out", str(tmp_path / "run2")]) == 2
    assert "holds no examples" in capsys.readouterr().err


def test_random_checkpoint_with_no_tokenizer_is_refused(tmp_path):
    path = make_random_checkpoint(tmp_path / "ck", preset="test")
    (path / "tokenizer.json").unlink()
    model = dg.load_model(path, device="cpu", dtype="float32")
    with pytest.raises(InputError, match="chat template"):
        finetune(model, chats(2), progress=False)


def test_lora_on_the_experts_trains_through_peft_target_parameters(checkpoint, tmp_path):
    path = checkpoint("plain")
    model, _ = finetune(dg.load_model(path, device="cpu", dtype="float32"), chats(4), steps=2, rank=2, experts=True,
                        lr=1e-2, warmup=1, out=tmp_path / "run", progress=False)
    expert_adapters = [p for n, p in model.named_parameters() if ".experts." in n and "lora_B" in n]
    assert expert_adapters and all(p.abs().sum() > 0 for p in expert_adapters)
    canvas = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(1))
    mine = denoise_logits(model, [2, 7, 8, 9], canvas)
    reloaded = load_adapter(dg.load_model(path, device="cpu", dtype="float32"), tmp_path / "run" / "adapter")
    assert torch.equal(denoise_logits(reloaded, [2, 7, 8, 9], canvas), mine)
    merged = merge(reloaded)
    assert ((denoise_logits(merged, [2, 7, 8, 9], canvas) - mine).norm() / mine.norm()).item() < 1e-5
