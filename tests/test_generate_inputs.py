"""generate()'s arguments are checked by type as well as by value, before anything runs, and the
CLI says every error in one line; the result's summary figures count what the user got."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import dgemma_helpers as dg
from dgemma_helpers.errors import InputError

L = 16  # the test checkpoints' canvas


@pytest.fixture(scope="module")
def model(checkpoint, ours):
    return ours(checkpoint("plain"))


def calls_on_step_never(*_):
    raise AssertionError("on_step ran: the bad argument was not refused up front")


BAD = [
    (dict(prompt=5), "prompt must be a string or a non-empty list of strings \\(got int 5\\)"),
    (dict(prompt=["ok", 3]), "prompt must be a string"),
    (dict(prompt="hi", t_min="0.1"), "t_min"),
    (dict(prompt="hi", t_max=float("inf")), "t_max"),
    (dict(prompt="hi", t_max=float("nan")), "t_max"),
    (dict(prompt="hi", eos_token_ids=5), "eos_token_ids must be a list of token ids \\(got int 5\\)"),
    (dict(prompt="hi", eos_token_ids=["a"]), "eos_token_ids must be a list of token ids"),
    (dict(prompt="hi", eos_token_ids=[10**6]), "outside the vocabulary"),
    (dict(prompt="hi", record_topk=2.5), "record_topk must be an int"),
    (dict(prompt="hi", record_topk=True), "record_topk must be an int"),
    (dict(prompt="hi", on_step=5), "on_step must be a function"),
    (dict(prompt="hi", initial_canvas=["a"] * L), "initial_canvas must hold integer token ids"),
    (dict(prompt="hi", initial_canvas=torch.zeros(L)), "initial_canvas must hold integer token ids"),
    (dict(prompt="hi", initial_canvas=list(range(L)), pinned="abc"), "pinned must be a tensor or a list"),
    (dict(prompt="hi", initial_canvas=list(range(L)), pinned=["1"]), "pinned must hold canvas positions"),
    (dict(prompt="hi", initial_canvas=list(range(L)), pinned={1, 2}), "pinned must be a tensor or a list"),
    (dict(prompt="hi", initial_canvas=list(range(L)), pinned=[[1], [2, 3]]), "rectangular"),
    (dict(messages=[{"role": "robot", "content": "x"}]), "role 'robot'; the chat template knows system, user"),
    (dict(messages=[{"role": "user", "content": None}]), "content NoneType None; give the message text as a str"),
    (dict(messages=[{"role": "user", "content": 7}]), "content int 7"),
    (dict(messages=[{"role": "user"}]), "must be a dict with 'role' and 'content'"),
    (dict(messages="hello"), "messages must be a chat"),
    (dict(messages=[{"role": "user", "content": "x"}], thinking="yes"), "thinking must be True, False or None"),
    (dict(input_ids=[True, 5]), "input_ids must be a list of token ids"),
    (dict(input_ids=torch.tensor([1.0, 2.0])), "got a torch.float32 tensor"),
    (dict(input_ids="5 6 7"), "input_ids must be a list of token ids"),
    (dict(prompt="hi", max_new_tokens=True), "max_new_tokens"),
    (dict(prompt="hi", max_denoising_steps=2.0), "max_denoising_steps"),
    (dict(prompt="hi", path=3), "path must be one of"),
]


@pytest.mark.parametrize("kwargs, match", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_arguments_are_refused_by_name_before_anything_runs(model, kwargs, match):
    kwargs = dict(max_new_tokens=4, max_denoising_steps=2, on_step=calls_on_step_never) | kwargs
    with pytest.raises(InputError, match=match):
        dg.generate(model, **kwargs)


def test_a_uint8_initial_canvas_is_a_canvas(model):
    canvas = torch.arange(L, dtype=torch.uint8) + 3
    result = dg.generate(model, input_ids=[5, 6, 7], initial_canvas=canvas, pinned=[0, 1], max_new_tokens=L,
                         max_denoising_steps=2, seed=0, eos_token_ids=[])
    assert result.token_ids[0, :2].tolist() == [3, 4]


def test_tokens_per_forward_counts_the_tokens_returned(model):
    one = dg.generate(model, input_ids=[5, 6, 7], max_new_tokens=1, max_denoising_steps=4, seed=0, eos_token_ids=[],
                      confidence_threshold=0.0)
    assert one.token_ids.shape == (1, 1) and one.num_forwards == 4
    assert one.tokens_per_forward == pytest.approx(1 / 4)
    assert one.canvas_tokens_per_forward == pytest.approx(L / 4)  # transformers' figure: the whole canvas


def test_an_over_long_prompt_gets_only_the_kits_error(tiny, capfd):
    with pytest.raises(InputError, match="exceeds the model's context of"):
        dg.generate(tiny, "word " * 9000, max_new_tokens=4)
    assert "Token indices sequence length" not in capfd.readouterr().err


@pytest.fixture(scope="module")
def tiny():
    return dg.load_model(dg.find_model())


# ---- the CLI --------------------------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dgemma_helpers", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, match", [
    (["--device", "banana"], "error: 'banana' is not a device name; use 'cpu', 'cuda' or 'cuda:N'."),
    (["--t-min", "0.9", "--t-max", "0.1"], "error: "),
    (["--confidence-threshold", "-1"], "error: confidence_threshold"),
])
def test_cli_errors_are_one_line_with_exit_code_2(checkpoint, args, match):
    out = cli("generate", "--model", str(checkpoint("plain")), "--prompt", "hi", "--max-new-tokens", "4", *args)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines()
             if line.strip() and not line.startswith(("dgemma_helpers:", "note: this checkpoint is UNTRAINED"))]
    assert len(lines) == 1 and lines[0].startswith(match), out.stderr
    assert "Traceback" not in out.stderr and "cpu, cuda, ipu" not in out.stderr  # not torch's list of device types


def test_cli_debug_shows_the_traceback(checkpoint):
    out = cli("--debug", "generate", "--model", str(checkpoint("plain")), "--prompt", "hi", "--device", "banana")
    assert out.returncode != 0 and "Traceback" in out.stderr and "DeviceError" in out.stderr


def test_cli_takes_every_sampler_setting_and_shows_defaults(checkpoint):
    out = cli("generate", "--model", str(checkpoint("plain")), "--prompt", "hi", "--max-new-tokens", "4", "--steps",
              "2", "--stability-threshold", "0", "--confidence-threshold", "0.5", "--rng", "transformers", "--seed",
              "3", "--path", "torch")
    assert out.returncode == 0, out.stderr
    assert "path: torch\n" in out.stderr + "\n"  # asked for: no fallback reason
    helptext = " ".join(cli("generate", "--help").stdout.split())
    for flag in ("--stability-threshold", "--confidence-threshold", "--rng", "--path"):
        assert flag in helptext
    assert "default: counter" in helptext and "generation_config.json" in helptext and "0.005" in helptext
