"""A merged fine-tuned checkpoint runs in vLLM as it runs in the kit and transformers (marked vllm:
`make test-vllm`). The adapter is trained briefly on models/dgemma-tiny and given large B matrices,
so the merged weights differ from the tiny model's everywhere LoRA reaches; then near-greedy parity
as in tests/test_vllm.py."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed here: make setup-vllm, then make test-vllm")
pytest.importorskip("peft", reason="fine-tuning needs peft in the vLLM venv (make setup-vllm installs it)")

import dgemma_helpers as dg  # noqa: E402
from dgemma_helpers.engines.vllm import VLLMEngine  # noqa: E402
from dgemma_helpers.sft import finetune, merge_checkpoint  # noqa: E402
from test_vllm import GREEDY, STEPS, TINY, check_parity  # noqa: E402

pytestmark = pytest.mark.vllm


def test_a_merged_checkpoint_gives_the_same_tokens_in_vllm_the_kit_and_transformers(tmp_path):
    chats = [[{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"The word is {w}."}]
             for w in ("apple", "river", "stone", "cloud")]
    model, _ = finetune(dg.load_model(TINY, device="cpu", dtype="float32"), chats, steps=2, rank=4, progress=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    base = dg.load_model(TINY, device="cpu", dtype="float32")
    merged = merge_checkpoint(model, tmp_path / "merged")
    assert not torch.equal(merged.layers[0].self_attn.q_proj.weight, base.layers[0].self_attn.q_proj.weight)
    kit = dg.load_model(tmp_path / "merged", device="cpu", dtype="float32")
    prompt = kit.tokenizer.apply_chat_template([{"role": "user", "content": "Say maple."}], add_generation_prompt=True,
                                               tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    with VLLMEngine(tmp_path / "merged", max_denoising_steps=STEPS, **GREEDY) as engine:
        check_parity(engine, kit, prompt)
