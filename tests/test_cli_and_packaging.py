"""The command line, chat prompts, and how the project installs beside transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dgemma_helpers as dg


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dgemma_helpers", *args], capture_output=True, text=True, timeout=300)


def test_cli_generate_prints_text_and_tokens_per_forward(checkpoint):
    out = run_cli("generate", "--model", str(checkpoint("plain")), "--prompt", "The sky is", "--max-new-tokens", "32",
                  "--steps", "4", "--seed", "1")
    assert out.returncode == 0, out.stderr
    assert "tokens per forward:" in out.stderr
    # which denoising step ran, and why auto did not take the fast one
    assert "path: torch (the fast path needs a CUDA GPU; the model is on 'cpu')" in out.stderr
    assert "canvas 1" in out.stderr and "canvas 2" in out.stderr  # one progress bar per canvas
    assert out.stdout.strip()


def test_cli_chat_with_thinking_switch(checkpoint):
    out = run_cli("generate", "--model", str(checkpoint("plain")), "--chat", "Hello", "--no-thinking",
                  "--max-new-tokens", "16", "--steps", "2")
    assert out.returncode == 0, out.stderr


def test_cli_reports_errors_without_a_traceback(tmp_path):
    out = run_cli("generate", "--model", str(tmp_path / "missing"), "--prompt", "hi")
    assert out.returncode == 2
    assert out.stderr.startswith("error: checkpoint directory") and "Traceback" not in out.stderr


def test_cli_info_and_make_random(tmp_path):
    out = run_cli("make-random", str(tmp_path / "r"), "--canvas-length", "8")
    assert out.returncode == 0 and "UNTRAINED" in out.stdout
    info = run_cli("info", "--model", str(tmp_path / "r"))
    assert info.returncode == 0 and '"canvas_length": 8' in info.stdout


def test_chat_messages_use_the_template_and_thinking_switch(checkpoint, ours):
    model = ours(checkpoint("plain"))
    chat = [{"role": "user", "content": "Why is the sky blue?"}]
    kwargs = dict(max_new_tokens=16, max_denoising_steps=2, seed=0)
    plain = dg.generate(model, messages=chat, **kwargs)
    off = dg.generate(model, messages=chat, thinking=False, **kwargs)
    expected = model.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert plain.prompt_ids[0] == list(expected)
    assert model.tokenizer.decode(off.prompt_ids[0]).endswith("<think></think>\n")
    batch = dg.generate(model, messages=[chat, [{"role": "user", "content": "Hi"}]], **kwargs)
    assert len(batch.texts) == 2


def test_thinking_on_a_template_without_the_switch_is_refused(checkpoint, ours, monkeypatch):
    model = ours(checkpoint("plain"))
    monkeypatch.setattr(model.tokenizer, "chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(dg.InputError, match="no thinking switch"):
        dg.generate(model, messages=[{"role": "user", "content": "x"}], thinking=True)


def test_transformers_does_not_mistake_our_kernels_package_for_the_hub_one():
    import kernels
    from transformers.utils import import_utils

    assert kernels.__file__.endswith("kernels/__init__.py") and "site-packages/kernels" not in kernels.__file__
    import_utils.is_kernels_available.cache_clear() if hasattr(import_utils.is_kernels_available, "cache_clear") else None
    assert not import_utils.is_kernels_available()
    # And transformers still loads and runs a model with our package importable.
    from transformers import DiffusionGemmaConfig  # noqa: F401


def test_public_api_is_typed_and_documented():
    import inspect

    for name in ("load_model", "generate", "save_checkpoint"):
        fn = getattr(dg, name)
        sig = inspect.signature(fn)
        assert fn.__doc__, name
        assert sig.return_annotation is not inspect.Signature.empty, name
