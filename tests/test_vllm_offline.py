"""The vLLM engine's side that needs no vLLM: the mapping of the kit's names to vLLM's, the refusals,
the result built from vLLM's output, the start-time files and flags, and the benchmark's handling
of engines that restart per setting. (The real vLLM runs in tests/test_vllm.py, marked vllm.)"""

from __future__ import annotations

import json
import math

import pytest

from dgemma_helpers import benchmarks as bench
from dgemma_helpers.benchmarks.engines import DIFFUSION, Engine, Measurement
from dgemma_helpers.checkpoint import generation_json
from dgemma_helpers.cli import main
from dgemma_helpers.config import GenerationSettings
from dgemma_helpers.engines.vllm import VLLMBase, VLLMEngine
from dgemma_helpers.engines.vllm_server import VLLMServer, cli_flags
from dgemma_helpers.engines.vllm_setup import (CPU_DEFAULTS, engine_args, shared_layer_scalar_problem, vllm_status,
                                               write_generation_config)
from dgemma_helpers.errors import InputError, MissingToolError
from dgemma_helpers.generation import Timings
from dgemma_helpers.model_paths import REPO_ROOT
from dgemma_helpers.train.random_checkpoint import make_random_checkpoint

TINY = REPO_ROOT / "models" / "dgemma-tiny"


@pytest.fixture(scope="module")
def mapping():
    """The engines' shared mapping on the tiny model, as an engine started with 8 steps would hold it."""
    return VLLMBase(TINY, dict(max_denoising_steps=8, t_min=1e-6, t_max=2e-6))


def ask(mapping, prompt=None, **kwargs):
    """What generate() would send: the checked Request (run() is the part that needs vLLM)."""
    if prompt is None and "input_ids" not in kwargs:
        prompt = "ROMEO:\n"
    sent = []
    mapping.run = lambda req, stream: sent.append(req) or ([[5] * req.max_new_tokens] * len(req.rows), Timings(), None, None)
    result = mapping.generate(prompt, **kwargs)
    return sent[0], result


def test_start_settings_come_from_the_checkpoint_then_the_caller(mapping):
    s = mapping.settings
    assert (s.max_denoising_steps, s.t_min, s.t_max) == (8, 1e-6, 2e-6)
    assert (s.entropy_bound, s.confidence_threshold, s.eos_token_ids) == (1000.0, 0.1, (1, 5))  # the tiny model's
    with pytest.raises(InputError, match="max_new_tokens is a per-call setting"):
        VLLMBase(TINY, dict(max_new_tokens=64))
    with pytest.raises(InputError, match="t_max must be greater than t_min"):
        VLLMBase(TINY, dict(t_min=0.9, t_max=0.1))


def test_per_call_settings_map_to_extra_args(mapping):
    L = mapping.config.canvas_length
    canvas = list(range(10, 10 + L))
    req, _ = ask(mapping, input_ids=[[2, 7, 9], [2, 8]], max_new_tokens=100, max_denoising_steps=4,
                 initial_canvas=canvas, pinned=[0, 1, 63], eos_token_ids=())
    assert req.rows == [[2, 7, 9], [2, 8]] and req.max_new_tokens == 100 and req.ignore_eos
    for x in req.extra_args:
        assert x == {"diffusion_max_steps": 4, "diffusion_seed_canvas": canvas, "diffusion_pinned": [0, 1, 63]}
    assert any("temperature schedule of the engine's 8" in n for n in req.notes)
    req, _ = ask(mapping, max_new_tokens=64)  # defaults: the engine's steps, EOS respected, no canvas
    assert req.extra_args == [{"diffusion_max_steps": 8}] and not req.ignore_eos and not req.notes
    # Text goes through the kit's tokenizer: vLLM gets the very ids the kit's generate would use.
    assert req.rows == [mapping.tokenizer.encode("ROMEO:\n", add_special_tokens=True)]


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=0), r"seed=0 is not available with vLLM.*rejects per-request seeds.*dg.generate"),
    (dict(rng="counter"), r"rng='counter' is not available with vLLM.*dg.generate"),
    (dict(on_step=print), r"on_step=.* is not available with vLLM.*one chunk per committed canvas"),
    (dict(record_topk=3), r"record_topk=3 is not available with vLLM"),
    (dict(entropy_bound=0.1), r"vLLM reads entropy_bound only when the engine starts.*runs with 1000.0"),
    (dict(t_min=0.5), r"reads t_min only when the engine starts"),
    (dict(eos_token_ids=[7]), r"reads eos_token_ids only when the engine starts.*\(1, 5\)"),
    (dict(max_denoising_steps=9), r"max_denoising_steps=9 is more than this vLLM engine's 8"),
    (dict(max_new_tokens=0), r"max_new_tokens must be a positive integer"),
    (dict(initial_canvas=[1, 2, 3]), r"initial_canvas has shape \[3\]; expected \[64\]"),
    (dict(initial_canvas=[0] * 64, pinned=[64]), r"pinned position\(s\) \[64\] are outside the canvas"),
    (dict(pinned=[1]), r"pinned positions need initial_canvas"),
    (dict(input_ids=[[2, 99999]]), r"outside the vocabulary"),
])
def test_what_vllm_cannot_do_is_refused_before_anything_is_sent(mapping, kwargs, match):
    with pytest.raises(InputError, match=match):
        ask(mapping, **kwargs)


def test_a_call_that_would_overflow_the_engine_context_is_refused(mapping, monkeypatch):
    monkeypatch.setattr(mapping, "max_model_len", 100)
    with pytest.raises(InputError, match="exceeds this vLLM engine's max_model_len=100"):
        ask(mapping, max_new_tokens=128)


def test_results_are_cut_to_max_new_tokens_and_padded_like_the_kits(mapping):
    req = mapping.request(None, None, [[2, 3], [2, 4]], 100, None, False, None, None, None)
    eos, pad, L = 1, 0, mapping.config.canvas_length
    long_row = list(range(10, 10 + 2 * L))  # an overshoot to two whole canvases (128 > 100)
    short_row = [11, 12, eos]  # stopped at EOS in its first canvas
    r = mapping.result(req, [long_row, short_row], Timings(total_s=1.0), steps=3 * 2 + 2, committed=3 * L)
    assert r.token_ids.shape == (2, 100) and r.trimmed_tokens == 28
    assert any("28 token(s) beyond max_new_tokens=100: trimmed" in n for n in r.notes)
    assert r.token_ids[0].tolist() == long_row[:100]
    assert r.token_ids[1].tolist() == short_row + [pad] * 97
    # 3 canvases committed, 8 counted steps of which 3 are the commits: 5 denoising steps.
    assert r.denoising_steps == 5 and r.num_forwards == 5 and r.mean_steps_per_canvas == pytest.approx(5 / 3)
    assert r.tokens_per_forward == pytest.approx(103 / 5) and r.steps_per_canvas == [] and r.path == "vllm"
    assert r.canvas_tokens_per_forward == pytest.approx(3 * L / 5)  # whole committed canvases, as transformers counts
    assert r.texts[1] == mapping.tokenizer.decode([11, 12], skip_special_tokens=True)
    unread = mapping.result(req, [short_row, short_row], Timings(), steps=None, committed=None)
    assert unread.denoising_steps is None and math.isnan(unread.tokens_per_forward)


def test_the_generation_config_directory_is_written_whole(tmp_path, monkeypatch):
    s = GenerationSettings(max_denoising_steps=7, entropy_bound=0.3, t_min=1e-6, t_max=2e-6)
    target = write_generation_config(s, tmp_path / "gen")
    assert json.loads((target / "generation_config.json").read_text()) == generation_json(s)
    assert [p.name for p in target.iterdir()] == ["generation_config.json"]

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("dgemma_helpers.atomic.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_generation_config(s.replace(entropy_bound=9.0), target)
    assert json.loads((target / "generation_config.json").read_text())["sampler_config"]["entropy_bound"] == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]  # no temporary left behind


def test_engine_arguments_and_server_flags(mapping, tmp_path):
    args = engine_args(mapping.path, mapping.config, mapping.settings, tmp_path, cpu=True, tensor_parallel_size=2,
                       quantization="fp8", max_num_seqs=None)
    assert {k: args[k] for k in CPU_DEFAULTS} == CPU_DEFAULTS
    assert args["diffusion_config"] == {"canvas_length": 64, "max_denoising_steps": 8}
    assert args["generation_config"] == str(tmp_path) and args["tensor_parallel_size"] == 2
    assert "max_num_seqs" not in args  # None means vLLM's default
    assert engine_args(mapping.path, mapping.config, mapping.settings, tmp_path, cpu=False)["dtype"] == "bfloat16"
    flags = cli_flags(dict(model="m", enforce_eager=True, enable_expert_parallel=False, max_num_seqs=4,
                           diffusion_config={"canvas_length": 64}))
    assert flags == ["--model", "m", "--enforce-eager", "--max-num-seqs", "4", "--diffusion-config",
                     '{"canvas_length": 64}']


@pytest.mark.parametrize("kwargs, match", [
    (dict(diffusion_max_step=4), r"diffusion_max_step is not a setting .*did you mean diffusion_max_steps\?"),
    (dict(max_denoising_step=4), r"did you mean max_denoising_steps\?"),
    (dict(entropy_bounds=0.5), r"did you mean entropy_bound\?"),
    (dict(diffusion_max_steps=4), r"per-request key of vLLM's, not an engine argument: give max_denoising_steps="),
    (dict(diffusion_config={"canvas_length": 64}), r"diffusion_config is set by the kit"),
])
def test_unknown_or_misspelled_diffusion_keys_are_refused_with_the_nearest_known(mapping, tmp_path, kwargs, match):
    # vLLM would take them without a word (vllm_xargs is free form); the kit's engines and server refuse.
    with pytest.raises(InputError, match=match):
        engine_args(mapping.path, mapping.config, mapping.settings, tmp_path, cpu=True, **kwargs)


def test_a_server_binds_loopback_and_its_command_carries_the_settings(monkeypatch):
    monkeypatch.setattr("dgemma_helpers.engines.vllm_server.vllm_status", lambda: (True, ""))
    server = VLLMServer(TINY, max_denoising_steps=6, entropy_bound=2.0, max_num_seqs=4)
    try:
        cmd = server.command()
        assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
        assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
        gen = json.loads(open(cmd[cmd.index("--generation-config") + 1] + "/generation_config.json").read())
        assert gen["max_denoising_steps"] == 6 and gen["sampler_config"]["entropy_bound"] == 2.0
        assert cmd[cmd.index("--max-num-seqs") + 1] == "4"
        # Its settings, published to clients at /dgemma/settings by the middleware vLLM is given.
        assert cmd[cmd.index("--middleware") + 1] == "dgemma_helpers.engines.vllm_server.PublishedSettings"
        assert server.published()["max_denoising_steps"] == 6 and server.published()["canvas_length"] == 64
    finally:
        server.stop()  # never started: removes its files only
    assert server._tmp is None


def test_checkpoints_vllm_would_read_differently_are_named(tmp_path):
    assert shared_layer_scalar_problem(TINY) is None
    apart = make_random_checkpoint(tmp_path / "apart", tokenizer=False)
    assert "encoder layer_scalar unlike the denoiser's" in shared_layer_scalar_problem(apart)
    shared = make_random_checkpoint(tmp_path / "shared", tokenizer=False, shared_layer_scalars=True)
    assert shared_layer_scalar_problem(shared) is None


def test_without_vllm_the_engine_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    monkeypatch.setattr("dgemma_helpers.engines.vllm_setup.VLLM_PYTHON", REPO_ROOT / "no-such-venv" / "bin" / "python")
    usable, why = vllm_status()
    assert not usable and "make setup-vllm" in why
    with pytest.raises(MissingToolError, match="make setup-vllm"):
        VLLMEngine(TINY)


def test_cli_refuses_vllm_where_it_cannot_run(monkeypatch, capsys):
    monkeypatch.setattr("dgemma_helpers.engines.vllm.vllm_status", lambda: (False, "vLLM is not here: make setup-vllm"))
    assert main(["generate", "--engine", "vllm", "--model", str(TINY), "--prompt", "ROMEO:\n"]) == 2
    assert "make setup-vllm" in capsys.readouterr().err
    assert main(["generate", "--engine", "vllm-server", "--model", str(TINY), "--prompt", "x"]) == 2
    assert "--engine vllm-server needs --url" in capsys.readouterr().err
    assert main(["generate", "--engine", "vllm", "--model", str(TINY), "--prompt", "x", "--seed", "3"]) == 2
    assert "seed" in capsys.readouterr().err


# ---- the benchmark ----------------------------------------------------------------------------
def test_vllm_engines_are_skipped_with_the_reason_where_vllm_is_missing(monkeypatch):
    monkeypatch.setattr("dgemma_helpers.benchmarks.engines.vllm_status", lambda: (False, "no vLLM: make setup-vllm"))
    sweep = bench.make_sweep(str(TINY), "vllm,vllm-server", "64", "2", "1", "1000", repeats=1, warmup=0)
    results = bench.run_benchmark(sweep, progress=lambda msg: None)
    assert [(e["name"], e["status"], e["reason"]) for e in results["engines"]] == [
        ("vllm", "skipped", "no vLLM: make setup-vllm"), ("vllm-server", "skipped", "no vLLM: make setup-vllm")]


@pytest.mark.parametrize("vllm_args, match", [
    ('{"entropy_bound": 1}', r"vllm_args sets \['entropy_bound'\]: the sweep sets the sampler"),
    ("[1, 2]", r"--vllm-args '\[1, 2\]' is not a JSON object"),
    ("{oops", r"--vllm-args '\{oops' is not JSON"),
    ('{"diffusion_bogus_knob": 1}', r"diffusion_bogus_knob is not a setting .* vLLM would ignore"),
])
def test_bad_vllm_args_are_refused(vllm_args, match):
    with pytest.raises(InputError, match=match):
        bench.make_sweep(str(TINY), "kit", "64", "2", "1", "1", vllm_args=vllm_args)


class Restarting(Engine):
    """Like vLLM: fixes (entropy bound, steps) when it starts; counts its starts and timed runs."""

    name, kind = "restarting", DIFFUSION
    in_process_memory = False

    def prepare(self, sweep, pool) -> None:
        self.key, self.log = None, []

    def configure(self, config) -> None:
        if (config.entropy_bound, config.steps) != self.key:
            self.key = (config.entropy_bound, config.steps)
            self.log.append(("start", self.key))

    def run(self, prompts, config, seed) -> Measurement:
        assert (config.entropy_bound, config.steps) == self.key, "a run before its engine was configured"
        self.log.append(("run", self.key))
        return Measurement(tokens=config.max_new_tokens, forwards=0, step_s=0.0, first_canvas_s=1e-3,
                           first_token_s=1e-3, tokens_per_forward=4.0, steps_per_canvas=2.0, texts=["x"])


def test_the_harness_restarts_such_engines_once_per_setting_and_untimed(monkeypatch):
    made = []
    monkeypatch.setitem(bench.ENGINES, "restarting", lambda: made.append(Restarting()) or made[-1])
    sweep = bench.make_sweep(str(TINY), "restarting", "16,32", "2,4", "1", "0.5,1000", repeats=2, warmup=1)
    results = bench.run_benchmark(sweep, progress=lambda msg: None)
    starts = [key for what, key in made[0].log if what == "start"]
    assert starts == [(0.5, 2), (0.5, 4), (1000.0, 2), (1000.0, 4)]  # once each, not at every grid point
    ok = [r for r in results["rows"] if r["status"] == "ok"]
    assert len(ok) == 8 and [r["max_new_tokens"] for r in ok] == [16] * 4 + [32] * 4  # reported in sweep order
    assert all(r["ms_per_step"] is None and r["peak_mem_mb"] is None for r in ok)  # not measured, not guessed
    assert all(r["peak_mem_kind"] == "not_measured" for r in ok)
