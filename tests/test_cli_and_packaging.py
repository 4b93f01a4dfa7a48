"""The command line, chat prompts, and how the project installs beside transformers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
    assert out.stdout.startswith("The sky is") and out.stdout.strip() != "The sky is"  # the prompt, then its continuation


def test_cli_progress_bars_end_at_the_rounds_a_canvas_ran():
    # The tiny model stops its canvases early: each bar is closed at the rounds run, not at 48.
    tiny = Path(__file__).resolve().parents[1] / "models" / "dgemma-tiny"
    out = run_cli("generate", "--model", str(tiny), "--prompt", "ROMEO:", "--max-new-tokens", "128")
    assert out.returncode == 0, out.stderr
    ran = [int(n) for n in re.search(r"steps per canvas \[([\d, ]+)\]", out.stderr).group(1).split(", ")]
    assert max(ran) < 48
    finals = re.findall(r"canvas (\d): 100%\|[^|]*\| (\d+)/(\d+)", out.stderr)
    assert [(int(c), int(n), int(t)) for c, n, t in finals] == [(i + 1, r, r) for i, r in enumerate(ran)]


def test_cli_help_shows_values_and_every_subcommand():
    top = run_cli("--help").stdout
    for name in ("generate", "info", "memory", "make-random", "train", "bench", "report", "vllm-serve"):
        assert f"python -m dgemma_helpers {name} " in top  # an example of each
    gen = run_cli("generate", "--help").stdout
    assert "generation_config.json" not in re.sub(r"\s+", " ", gen).split("sampler settings:")[1].split(".", 1)[1]
    assert re.search(r"--steps STEPS\s+max denoising steps per canvas \(default 48\)", gen)
    # vLLM's own flags sit apart from the kit's
    kit_part, vllm_part = gen.split("options:")[1].split("vLLM's flags")
    assert "--tensor-parallel-size" in vllm_part and "--tensor-parallel-size" not in kit_part
    assert "--seed" in kit_part and "--seed" not in vllm_part


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
    assert "vision tower: an untrained placeholder" in info.stderr and "sampler defaults: max_new_tokens=" in info.stderr


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


def test_a_top_level_kernels_package_shadows_nothing_of_the_kit(tmp_path):
    """The kit's kernels install as `dgemma_kernels`: a stand-in top-level `kernels` (Hugging Face's
    hub-kernels package has that name) first on sys.path changes nothing, and the kit never imports it."""
    import subprocess
    import sys

    (tmp_path / "kernels").mkdir()
    # Importable, as the hub package is (transformers probes it); too old for transformers to use.
    (tmp_path / "kernels" / "__init__.py").write_text("__version__ = '0.0.1'\nSTAND_IN = True\n")
    script = ("import sys, dgemma_helpers as dg, dgemma_kernels\n"
              "m = dg.load_model(dg.find_model('models/dgemma-tiny'))\n"
              "r = dg.generate(m, 'To be', max_new_tokens=8, max_denoising_steps=2, seed=0)\n"
              "assert getattr(sys.modules.get('kernels'), 'STAND_IN', True), 'another kernels package was imported'\n"
              "print('OK', len(r.token_ids[0]), dgemma_kernels.__file__)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("OK 8") and proc.stdout.strip().endswith("kernels/__init__.py")


def test_public_api_is_typed_and_documented():
    import inspect

    for name in ("load_model", "generate", "save_checkpoint"):
        fn = getattr(dg, name)
        sig = inspect.signature(fn)
        assert fn.__doc__, name
        assert sig.return_annotation is not inspect.Signature.empty, name


def test_import_loads_the_engine_only():
    """`import dgemma_helpers` loads the engine and the public face; the optional parts (plots,
    the widget, papermill, benchmarks, training) load on first use."""
    import subprocess
    import sys

    script = ("import sys, dgemma_helpers as dg\n"
              "optional = ('matplotlib', 'anywidget', 'ipywidgets', 'papermill', 'nbformat', 'peft',\n"
              "            'dgemma_helpers.benchmarks', 'dgemma_helpers.notebook', 'dgemma_helpers.train',\n"
              "            'dgemma_helpers.visualization')\n"
              "print(sorted(m for m in optional if m in sys.modules))\n"
              "dg.bench.run_benchmark, dg.DenoisingTrace, dg.train\n"
              "print('dgemma_helpers.benchmarks' in sys.modules, 'dgemma_helpers.visualization' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["[]", "True True"]


def test_the_wheel_holds_every_module_of_the_tree(tmp_path):
    """A non-editable install gets what pyproject.toml lists: build the wheel (setuptools, no network)
    and check that every .py of dgemma_helpers/ and kernels/ and the player's static files are in it."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy: a build/ folder left in the checkout would hide a missing package
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    for name in ("dgemma_helpers", "kernels"):
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PIP_NO_INDEX": "1"})
    assert proc.returncode == 0, proc.stderr
    import zipfile

    (wheel,) = tmp_path.glob("*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    wanted = {p.relative_to(root).as_posix() for p in (root / "dgemma_helpers").rglob("*")
              if p.is_file() and (p.suffix == ".py" or "static" in p.parts) and "__pycache__" not in p.parts}
    wanted |= {"dgemma_kernels/" + p.relative_to(root / "kernels").as_posix() for p in (root / "kernels").glob("*.py")}
    assert not wanted - inside, f"missing from the wheel: {sorted(wanted - inside)[:10]} (pyproject's packages list)"
