"""The benchmark harness, its engines and the autoregressive baseline (random checkpoints, CPU).

No test asserts a timing: only that every metric is measured, finite and consistent, that bad
sweeps are refused before anything runs, that failures are recorded, and that files are atomic.
"""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch

from dgemma_helpers import benchmarks as bench
from dgemma_helpers.benchmarks.engines import DIFFUSION, Engine, KitCudaEngine, KitEngine, Measurement
from dgemma_helpers.benchmarks.report import write_results
from dgemma_helpers.cache import KVCache
from dgemma_helpers.cli import main
from dgemma_helpers.engines.autoregressive import continuation_nll, generate_autoregressive
from dgemma_helpers.errors import CheckpointError, InputError

SMALL = dict(max_new_tokens="16", steps="2", batch="1", entropy_bounds="0.5", repeats=1, warmup=0)
PNG = b"\x89PNG\r\n\x1a\n"


# ---- the autoregressive baseline ------------------------------------------------------------
def greedy_by_recompute(model, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding without a cache: the whole sequence re-encoded for every token."""
    seq = list(prompt)
    for _ in range(n):
        cache = KVCache(model.config, 1, len(seq), device="cpu", dtype=model.dtype)
        with torch.no_grad():
            logits = model.logits(model.encode(torch.tensor([seq]), cache))
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


def test_ar_greedy_equals_decoding_without_cache(checkpoint, ours):
    model = ours(checkpoint("ring"))  # the sliding window (8) wraps: the ring cache is exercised
    prompts = [[5, 6, 7, 8, 9], [20, 21, 22]]  # different lengths: the batch is left-padded
    r = generate_autoregressive(model, input_ids=prompts, max_new_tokens=14, eos_token_ids=())
    assert r.token_ids.shape == (2, 14)
    assert r.num_forwards == 13  # the prefill wrote the first token
    for row, prompt in zip(r.token_ids.tolist(), prompts):
        assert row == greedy_by_recompute(model, prompt, 14)
    t = r.timings
    assert 0 < t.first_token_s <= t.first_canvas_s <= t.total_s and t.decode_s > 0


def test_ar_stops_at_eos_and_pads_after_it(checkpoint, ours):
    model = ours(checkpoint("confident"))
    free = generate_autoregressive(model, input_ids=[[5, 6, 7], [30, 31, 32]], max_new_tokens=12, eos_token_ids=())
    eos = free.token_ids[0, 4].item()  # pretend the 5th token of row 0 is an end of sequence
    r = generate_autoregressive(model, input_ids=[[5, 6, 7], [30, 31, 32]], max_new_tokens=12, eos_token_ids=[eos])
    first = free.token_ids[0].tolist().index(eos)
    assert r.token_ids[0, :first + 1].tolist() == free.token_ids[0, :first + 1].tolist()
    assert (r.token_ids[0, first + 1:] == model.config.pad_token_id).all()
    alone = generate_autoregressive(model, input_ids=[5, 6, 7], max_new_tokens=12, eos_token_ids=[eos])
    assert alone.token_ids.shape[1] == first + 1  # a lone row stops right after its EOS


def test_ar_sampling_is_seeded_and_private(checkpoint, ours):
    model = ours(checkpoint("plain"))
    state = torch.get_rng_state()
    a = generate_autoregressive(model, input_ids=[5, 6, 7], max_new_tokens=24, temperature=1.5, seed=3, eos_token_ids=())
    b = generate_autoregressive(model, input_ids=[5, 6, 7], max_new_tokens=24, temperature=1.5, seed=3, eos_token_ids=())
    c = generate_autoregressive(model, input_ids=[5, 6, 7], max_new_tokens=24, temperature=1.5, seed=4, eos_token_ids=())
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.token_ids, b.token_ids) and not torch.equal(a.token_ids, c.token_ids)


@pytest.mark.parametrize("kwargs, match", [(dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")),
                         "temperature"), (dict(max_new_tokens=0), "max_new_tokens"), (dict(seed="1"), "seed")])
def test_ar_bad_inputs(checkpoint, ours, kwargs, match):
    with pytest.raises(InputError, match=match):
        generate_autoregressive(ours(checkpoint("plain")), input_ids=[5, 6], **kwargs)


def test_continuation_nll_prefers_the_models_own_tokens(checkpoint, ours):
    model = ours(checkpoint("confident"))
    greedy = generate_autoregressive(model, input_ids=[5, 6, 7], max_new_tokens=10, eos_token_ids=())
    noise = torch.randint(3, model.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(0))
    own = continuation_nll(model, greedy.prompt_ids, greedy.token_ids)
    assert 0 <= own < continuation_nll(model, greedy.prompt_ids, noise)


# ---- sweeps: refused before anything runs ----------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(engines="kit,nope"), r"unknown engine\(s\) 'nope'.*choose from kit, kit-cuda, transformers, ar, ar-hf, vllm, vllm-server"),
    (dict(engines=" , "), r"no engines given"),
    (dict(engines="kit,kit"), r"listed twice"),
    (dict(max_new_tokens="64,abc"), r"--max-new-tokens: 'abc' is not an integer"),
    (dict(max_new_tokens="64,,128"), r"without blanks"),
    (dict(steps="0"), r"--steps: 0 is not a positive integer"),
    (dict(steps="8,8"), r"--steps lists a value twice"),
    (dict(batch="-2"), r"--batch: -2 is not a positive integer"),
    (dict(batch="1.5"), r"--batch: '1.5' is not an integer"),
    (dict(entropy_bounds="nan"), r"--entropy-bounds: nan is not a number > 0"),
    (dict(entropy_bounds="0"), r"--entropy-bounds: 0.0 is not a number > 0"),
    (dict(repeats=0), r"repeats must be an integer >= 1"),
    (dict(warmup=-1), r"warmup"),
    (dict(reference="sglang"), r"reference engine 'sglang' is unknown"),
    (dict(ar_model="/no/such/dir"), r"--ar-model '/no/such/dir' is not a directory"),
    (dict(colour="blue"), r"unknown benchmark option"),
])
def test_bad_sweeps_are_refused(checkpoint, kwargs, match):
    with pytest.raises(InputError, match=match):
        bench.make_sweep(str(checkpoint("plain")), **{**SMALL, **kwargs})


def test_flag_values_as_the_cli_and_papermill_pass_them():
    assert bench.parse_list("64, 128", int, "max-new-tokens") == [64, 128]
    assert bench.parse_list(16, int, "steps") == [16]  # papermill -p steps 16 gives an int
    assert bench.parse_list(0.5, float, "entropy-bounds") == [0.5]
    assert bench.parse_list([1, 4], int, "batch") == [1, 4]
    for bad in (True, None, "", "1;2"):
        with pytest.raises(InputError, match="--batch"):
            bench.parse_list(bad, int, "batch")


def test_missing_model_says_how_to_get_one(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="not found.*hf download"):
        bench.make_sweep(str(tmp_path / "nothing"), **SMALL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("dgemma_helpers.model_paths.REPO_ROOT", tmp_path)
    with pytest.raises(CheckpointError, match="make train-tiny"):
        bench.make_sweep("models/dgemma-tiny", **SMALL)


def test_nothing_is_loaded_for_a_bad_sweep(checkpoint, monkeypatch, tmp_path, capsys):
    loads = []
    monkeypatch.setattr("dgemma_helpers.checkpoint.load_model", lambda *a, **k: loads.append(a))
    sweep = bench.Sweep(model=str(checkpoint("plain")), engines=["kit", "warp-drive"])
    with pytest.raises(InputError, match="warp-drive"):
        bench.run_benchmark(sweep)
    code = main(["bench", "--model", str(checkpoint("plain")), "--engines", "kit,warp-drive", "--out", str(tmp_path / "o")])
    assert code == 2 and "unknown engine(s) 'warp-drive'" in capsys.readouterr().err
    assert not loads and not (tmp_path / "o").exists()


# ---- the harness ------------------------------------------------------------------------------
def test_every_engine_side_by_side(checkpoint, tmp_path):
    sweep = bench.make_sweep(str(checkpoint("confident")), "kit,kit-cuda,transformers,ar,ar-hf", "16,32", "3",
                             "1,2", "0.5", repeats=2, warmup=1)
    results = bench.run_benchmark(sweep, progress=lambda msg: None)
    status = {e["name"]: e for e in results["engines"]}
    assert [status[n]["status"] for n in ("kit", "transformers", "ar")] == ["ok"] * 3
    assert status["ar-hf"]["status"] == "skipped" and "--ar-model" in status["ar-hf"]["reason"]
    assert status["kit-cuda"]["status"] == "skipped" and "CUDA" in status["kit-cuda"]["reason"]

    ok = {(r["engine"], r["max_new_tokens"], r["batch"]): r for r in results["rows"] if r["status"] == "ok"}
    assert set(ok) == {(e, n, b) for e in ("kit", "transformers", "ar") for n in (16, 32) for b in (1, 2)}
    for (engine, n, b), r in ok.items():
        assert r["tokens"] == n * b  # EOS ignored: every engine wrote the same number of tokens
        assert r["repeats"] == 2
        assert r["tokens_per_s_min"] <= r["tokens_per_s"] <= r["tokens_per_s_max"]
        assert r["ms_per_step_min"] <= r["ms_per_step"] <= r["ms_per_step_max"]
        assert 0 < r["first_canvas_ms"] <= r["latency_ms"] * 1.001
        assert r["peak_mem_mb"] > 0 and r["peak_mem_kind"].startswith("cpu_rss")
        assert r["quality_metric"] == "gen_nll" and math.isfinite(r["quality"])
        assert r["speedup_vs_baseline"] > 0
        if engine == "ar":
            assert r["tokens_per_forward"] == 1.0 and r["steps_per_canvas"] is None and r["steps"] is None
            assert r["first_token_ms"] < r["first_canvas_ms"] and r["speedup_vs_baseline"] == 1.0
        else:  # canvas 16, at most 3 steps per canvas
            assert 1 <= r["steps_per_canvas"] <= 3 and r["tokens_per_forward"] >= 16 / 3
            assert r["speedup_vs_reference"] > 0 and r["step_speedup_vs_reference"] > 0
    assert ok[("transformers", 16, 1)]["speedup_vs_reference"] == 1.0
    assert results["machine"]["torch"] == torch.__version__ and results["machine"]["cpu_cores"] >= 1
    assert results["floor"] is None and results["model"]["untrained"]

    json_path, csv_path = write_results(results, tmp_path)
    assert json.loads(json_path.read_text())["rows"][0].keys() == set(bench.ROW_FIELDS)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(results["rows"]) and list(rows[0]) == bench.ROW_FIELDS
    for path in bench.save_plots(bench.load_results(tmp_path), tmp_path).values():
        assert path.read_bytes().startswith(PNG)


class Flaky(Engine):
    """Fails at batch 2, as a GPU out of memory would."""

    name, kind = "flaky", DIFFUSION

    def prepare(self, sweep, pool) -> None:
        pass

    def run(self, prompts, config, seed) -> Measurement:
        if config.batch == 2:
            raise RuntimeError("out of memory at batch 2")
        return Measurement(tokens=config.max_new_tokens * config.batch, forwards=2, step_s=1e-3, first_canvas_s=1e-3,
                           first_token_s=1e-3, tokens_per_forward=8.0, steps_per_canvas=2.0,
                           texts=["to be or not to bee"] * config.batch)


class Broken(Flaky):
    name = "broken"

    def prepare(self, sweep, pool) -> None:
        raise OSError("weights unreadable")


def test_failures_are_recorded_and_the_report_still_renders(checkpoint, monkeypatch, tmp_path):
    monkeypatch.setitem(bench.ENGINES, "flaky", Flaky)
    monkeypatch.setitem(bench.ENGINES, "broken", Broken)
    model = tmp_path / "model"
    shutil.copytree(checkpoint("plain"), model)
    (model / "train_words.txt").write_text("to\nbe\nor\nnot\n")  # as models/dgemma-tiny ships it
    sweep = bench.make_sweep(str(model), "flaky,broken,ar", "16", "2", "1,2", "0.5", repeats=1, warmup=0,
                             reference="flaky", baseline="ar")
    results = bench.run_benchmark(sweep, progress=lambda msg: None)
    rows = {(r["engine"], r["batch"]): r for r in results["rows"]}
    assert rows[("flaky", 1)]["status"] == "ok" and rows[("flaky", 1)]["quality"] == pytest.approx(5 / 6)
    assert rows[("flaky", 1)]["quality_metric"] == "word_validity"
    assert rows[("flaky", 2)]["status"] == "failed" and "out of memory at batch 2" in rows[("flaky", 2)]["error"]
    assert rows[("broken", None)]["status"] == "failed" and "weights unreadable" in rows[("broken", None)]["error"]
    assert {e["name"]: e["status"] for e in results["engines"]} == {"flaky": "ok", "broken": "failed", "ar": "ok"}
    assert rows[("ar", 2)]["status"] == "ok" and 0 <= rows[("ar", 2)]["quality"] <= 1
    write_results(results, tmp_path)
    bench.save_plots(results, tmp_path)
    table = bench.engines_table(results)
    assert "out of memory at batch 2" in table and "weights unreadable" in table


def test_results_files_are_never_half_written(tmp_path, monkeypatch):
    results = dict(schema="dgemma-bench/1", rows=[dict(engine="kit", status="ok", tokens_per_s=float("nan"))])
    write_results(results, tmp_path)
    before = (tmp_path / "results.json").read_text()
    assert json.loads(before)["rows"][0]["tokens_per_s"] is None  # NaN is not JSON: it becomes null

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("dgemma_helpers.benchmarks.report.os.replace", interrupted)
    results["rows"][0]["tokens_per_s"] = 123.0
    with pytest.raises(KeyboardInterrupt):
        write_results(results, tmp_path)
    assert (tmp_path / "results.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json"]  # no temporary left
    with pytest.raises(KeyboardInterrupt):
        write_results(results, tmp_path / "fresh")
    assert list((tmp_path / "fresh").iterdir()) == []


def test_autoregressive_checkpoint_through_transformers(checkpoint, tmp_path):
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    from dgemma_helpers.tokenizer import train_tokenizer

    config = Gemma4TextConfig(vocab_size=400, vocab_size_per_layer_input=400, hidden_size_per_layer_input=8,
                              hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=16, global_head_dim=16, sliding_window=16,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
                              pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    Gemma4ForCausalLM(config).save_pretrained(tmp_path / "gemma4")
    train_tokenizer(["ROMEO: But soft, what light through yonder window breaks? It is the east."] * 4,
                    vocab_size=400).save_pretrained(tmp_path / "gemma4")
    sweep = bench.make_sweep(str(checkpoint("plain")), "ar,ar-hf", "16", "2", "2", "0.5", repeats=1, warmup=1,
                             ar_model=str(tmp_path / "gemma4"))
    results = bench.run_benchmark(sweep, progress=lambda msg: None)
    row = next(r for r in results["rows"] if r["engine"] == "ar-hf")
    assert row["status"] == "ok", row["error"]
    assert row["tokens"] == 32 and row["tokens_per_forward"] == 1.0 and row["first_token_ms"] > 0
    assert row["speedup_vs_baseline"] > 0 and row["quality"] is None  # another vocabulary: not scored by NLL


def test_the_gpu_path_is_the_kit_engine_on_another_path():
    engine = bench.ENGINES["kit-cuda"]()
    assert isinstance(engine, KitCudaEngine) and isinstance(engine, KitEngine) and engine.path == "fast"
    assert bench.ENGINES["kit"]().path == "torch"
    if not torch.cuda.is_available():
        ok, reason = engine.available(bench.Sweep())
        assert not ok and "CUDA" in reason
