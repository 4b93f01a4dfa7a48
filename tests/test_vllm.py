"""Against the real vLLM (marked vllm: `make setup-vllm`, then `make test-vllm`; CI runs it on 2 CPU cores).

Parity is near-greedy: with t_min 1e-6 and t_max 2e-6 in the start-time settings every position is
(in effect) argmax, and with the same first canvas the three engines cannot differ by their random
numbers, only by their arithmetic: vLLM, the kit and transformers must write the same tokens, on
models/dgemma-tiny and on a random checkpoint of another shape. One vLLM engine per checkpoint and
one server serve the whole module (an engine takes ~30-50 s to start on a CPU). Nothing is
downloaded; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed here: make setup-vllm, then make test-vllm")

from test_signals import alive, port_free  # noqa: E402

import dgemma_helpers as dg  # noqa: E402
from dgemma_helpers import benchmarks as bench  # noqa: E402
from dgemma_helpers.engines.vllm import VLLMEngine  # noqa: E402
from dgemma_helpers.engines.vllm_server import (SETTINGS_PATH, VLLMServer, VLLMServerClient, _get,  # noqa: E402
                                                free_port)
from dgemma_helpers.errors import EngineError, InputError  # noqa: E402
from dgemma_helpers.model_paths import REPO_ROOT  # noqa: E402
from dgemma_helpers.train.random_checkpoint import make_random_checkpoint  # noqa: E402

pytestmark = pytest.mark.vllm
os.environ["HF_HUB_OFFLINE"] = "1"
TINY = REPO_ROOT / "models" / "dgemma-tiny"
GREEDY = dict(t_min=1e-6, t_max=2e-6)
STEPS = 8
# Another shape than the tiny model's (vocab 4096, hidden 256, heads of 64/128, 16 experts top-4,
# canvas 64): vocab 1536, hidden 128, heads of 32/64, two full layers of five, 12 experts top-3,
# canvas 32. vLLM's CPU attention needs head sizes of 32 or more (the tests' 16 is refused); the
# window covers prompt + canvas (beyond it vLLM's denoiser attends differently from transformers');
# the encoder's layer scalars are the denoiser's (vLLM loads one per layer for both passes).
OTHER = dict(preset="test", vocab_size=1536, hidden_size=128, head_dim=32, global_head_dim=64, num_hidden_layers=5,
             layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
                          "full_attention"], num_experts=12, top_k_experts=3, sliding_window=128, embed_std=1.0,
             seed=5, canvas_length=32, shared_layer_scalars=True)


def seed_canvas(length: int, vocab: int, seed: int = 9) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def transformers_tokens(path, prompt: list[int], canvas: list[int], n: int) -> list[int]:
    from transformers import DiffusionGemmaForBlockDiffusion

    ref = DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, max_denoising_steps=STEPS,
                           eos_token_id=[], decoder_input_ids=torch.tensor([canvas]), **GREEDY)
    return out.sequences[0, len(prompt):len(prompt) + n].tolist()


def check_parity(engine, model, prompt: list[int]) -> None:
    """vLLM == the kit == transformers on one canvas from the same seed canvas, near-greedy."""
    L, V = model.config.canvas_length, model.config.vocab_size
    canvas = seed_canvas(L, V)
    ours = dg.generate(model, input_ids=prompt, initial_canvas=canvas, max_new_tokens=L, max_denoising_steps=STEPS,
                       eos_token_ids=[], **GREEDY)
    theirs = engine.generate(input_ids=prompt, initial_canvas=canvas, max_new_tokens=L, eos_token_ids=[])
    reference = transformers_tokens(model.path, prompt, canvas, L)
    assert theirs.path == "vllm" and theirs.token_ids.shape == (1, L)
    assert theirs.token_ids[0].tolist() == ours.token_ids[0].tolist() == reference
    # vLLM's counters say how many rounds it ran: the kit's number (adaptive stopping agrees too).
    assert theirs.denoising_steps == ours.steps_per_canvas[0][0]
    assert theirs.text == ours.text and not theirs.notes


def test_parity_on_a_random_checkpoint_of_another_shape(tmp_path):
    # First in the module: vLLM's counters follow the engine started last in a process, so this
    # engine comes and goes before the tiny model's, which the later tests share.
    path = make_random_checkpoint(tmp_path / "other", **OTHER)
    model = dg.load_model(path, device="cpu", dtype="float32")
    prompt = torch.randint(3, model.config.vocab_size, (7,), generator=torch.Generator().manual_seed(2)).tolist()
    with VLLMEngine(path, max_denoising_steps=STEPS, **GREEDY) as engine:
        check_parity(engine, model, prompt)


@pytest.fixture(scope="module")
def tiny_vllm():
    with VLLMEngine(TINY, max_denoising_steps=STEPS, **GREEDY) as engine:
        yield engine


@pytest.fixture(scope="module")
def tiny_kit():
    return dg.load_model(TINY, device="cpu", dtype="float32")


def test_parity_on_the_tiny_model(tiny_vllm, tiny_kit):
    check_parity(tiny_vllm, tiny_kit, tiny_kit.tokenizer.encode("ROMEO:\nBut soft, what light", add_special_tokens=True))


def test_pinned_positions_are_held_as_inputs_and_what_vllm_commits_there_is_said(tiny_vllm, tiny_kit):
    L, V = tiny_kit.config.canvas_length, tiny_kit.config.vocab_size
    canvas = seed_canvas(L, V, seed=4)
    prompt = tiny_kit.tokenizer.encode("JULIET:\n", add_special_tokens=True)
    # Every position pinned: every round reads the seed canvas, without self-conditioning, so the
    # committed canvas is one denoiser pass over it: the kit's (and transformers') single round.
    held = tiny_vllm.generate(input_ids=prompt, initial_canvas=canvas, pinned=list(range(L)), max_new_tokens=L,
                              eos_token_ids=())
    one_pass = dg.generate(tiny_kit, input_ids=prompt, initial_canvas=canvas, max_new_tokens=L, max_denoising_steps=1,
                           eos_token_ids=(), **GREEDY)
    assert held.token_ids.tolist() == one_pass.token_ids.tolist()
    assert held.token_ids.tolist() != [canvas]  # (so the pinned tokens did not come back as they went in)
    # Unlike the kit, vLLM commits its own prediction at a pinned position: the result names them.
    pins = [0, 1, 2, 3, 30, 31]
    some = tiny_vllm.generate(input_ids=prompt, initial_canvas=canvas, pinned=pins, max_new_tokens=L, eos_token_ids=())
    row = some.token_ids[0].tolist()
    moved = [(0, p) for p in pins if row[p] != canvas[p]]
    assert bool(moved) == any("committed other tokens" in n for n in some.notes)
    if moved:
        assert any(str(moved[:8]) in n for n in some.notes)
    kit = dg.generate(tiny_kit, input_ids=prompt, initial_canvas=canvas, pinned=pins, max_new_tokens=L,
                      max_denoising_steps=STEPS, eos_token_ids=(), **GREEDY)
    assert [kit.token_ids[0, p].item() for p in pins] == [canvas[p] for p in pins]  # the kit's contract


@pytest.mark.parametrize("n", [1, 100, 150])
def test_max_new_tokens_is_honoured_exactly(tiny_vllm, n):
    r = tiny_vllm.generate(["ROMEO:\n", "JULIET:\n"], max_new_tokens=n, eos_token_ids=())
    assert r.token_ids.shape == (2, n)  # (fewer tokens back would give fewer columns: whole canvases, cut at n)
    # What vLLM returned beyond n (some versions round up to whole canvases) is cut and said.
    assert (r.trimmed_tokens > 0) == any("trimmed" in note for note in r.notes)


def test_a_batch_of_four_equals_the_kits_batch(tiny_vllm, tiny_kit):
    prompts = ["ROMEO:\n", "JULIET:\n", "HAMLET:\nTo be", "KING LEAR:\n"]
    L = tiny_kit.config.canvas_length
    canvas = seed_canvas(L, tiny_kit.config.vocab_size, seed=5)
    theirs = tiny_vllm.generate(prompts, initial_canvas=canvas, max_new_tokens=L, eos_token_ids=())
    ours = dg.generate(tiny_kit, prompts, initial_canvas=canvas, max_new_tokens=L, max_denoising_steps=STEPS,
                       eos_token_ids=(), **GREEDY)
    assert theirs.token_ids.shape == (4, L)
    assert theirs.token_ids.tolist() == ours.token_ids.tolist()
    assert theirs.texts == ours.texts and theirs.prompt_ids == ours.prompt_ids


@pytest.fixture(scope="module")
def server():
    with VLLMServer(TINY, max_denoising_steps=STEPS, **GREEDY) as s:
        yield s


def test_the_client_states_the_servers_real_settings_and_refuses_what_vllm_would_cap(server):
    published = json.loads(_get(server.url + SETTINGS_PATH, timeout=10))
    assert published["max_denoising_steps"] == STEPS and published["t_min"] == GREEDY["t_min"]
    client = VLLMServerClient(server.url, TINY)  # told nothing: it reads the server's settings
    assert client.settings.max_denoising_steps == STEPS and client.settings_unknown is None
    fewer = client.generate("ROMEO:\n", max_new_tokens=16, max_denoising_steps=4)
    assert any(f"temperature schedule of the server's {STEPS}" in n for n in fewer.notes), fewer.notes
    with pytest.raises(InputError, match=f"max_denoising_steps=16 is more than this vLLM server's {STEPS}"):
        client.generate("ROMEO:\n", max_new_tokens=16, max_denoising_steps=16)
    with pytest.raises(InputError, match=f"runs with {STEPS}"):
        VLLMServerClient(server.url, TINY, max_denoising_steps=48)
    # The CLI says the same, with the server's limit.
    cli = [sys.executable, "-m", "dgemma_helpers", "generate", "--engine", "vllm-server", "--url", server.url,
           "--model", str(TINY), "--prompt", "ROMEO:\n", "--max-new-tokens", "16"]
    over = subprocess.run(cli + ["--steps", "16"], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert over.returncode == 2 and f"more than this vLLM server's {STEPS}" in over.stderr, over.stderr
    under = subprocess.run(cli + ["--steps", "4"], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert under.returncode == 0 and f"the server's {STEPS}" in under.stderr, under.stderr


def test_bounded_load_all_answered_exactly_one_disconnect_dropped_healthy_after(server, tiny_kit):
    """16 requests, 4 in flight, half streamed; one client leaves after its first chunk."""
    client = server.client()
    L = tiny_kit.config.canvas_length
    lengths = [L // 2 + 7 * i for i in range(16)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: client.generate(f"ROMEO:\n{i}", max_new_tokens=lengths[i], eos_token_ids=(),
                                                          stream=i % 2 == 0), range(16)))
    assert [r.token_ids.shape for r in results] == [(1, n) for n in lengths]
    assert all(r.trimmed_tokens == 0 for r in results)

    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    body = dict(model=client.model_name, prompt="ROMEO:\n", max_tokens=8 * L, stream=True,
                vllm_xargs={}, ignore_eos=True)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data:")  # the first canvas came
    conn.close()  # ... and the client is gone, seven canvases early
    assert _get(server.url + "/health", timeout=10) is not None
    after = client.generate("ROMEO:\n", max_new_tokens=L, eos_token_ids=(), stream=True)
    assert after.token_ids.shape == (1, L)
    deadline = time.monotonic() + 120
    while running_requests(server.url) != 0:  # vLLM dropped the abandoned request
        assert time.monotonic() < deadline, "a request still runs 120 s after the last one was answered"
        time.sleep(0.5)


def running_requests(url: str) -> float:
    for line in (_get(url + "/metrics", timeout=10) or "").splitlines():
        if line.startswith("vllm:num_requests_running"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("the server's /metrics has no vllm:num_requests_running")


def test_against_a_plain_vllm_server_the_client_says_what_it_cannot_know():
    # A stand-in for a server vLLM started without the kit: /v1/models, and 404 at /dgemma/settings.
    class PlainVLLM(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            found = self.path == "/v1/models"
            self.send_response(200 if found else 404)
            self.end_headers()
            if found:
                self.wfile.write(json.dumps({"data": [{"id": str(TINY), "max_model_len": 4096}]}).encode())

        def log_message(self, *args):
            pass

    stub = http.server.HTTPServer(("127.0.0.1", 0), PlainVLLM)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        client = VLLMServerClient(f"http://127.0.0.1:{stub.server_port}", TINY)
    finally:
        stub.shutdown()
    req = client.request("ROMEO:\n", None, None, 16, 100, False, None, None, None)  # no refusal: no known limit
    assert req.extra_args[0]["diffusion_max_steps"] == 100
    [note] = req.notes
    assert "plain vLLM server" in note and "the checkpoint's (48 steps" in note and "without a word" in note


def test_a_server_on_loopback_answers_streamed_and_not_then_stops(server, tiny_vllm, tiny_kit):
    assert server.url.startswith("http://127.0.0.1:")
    client = server.client()
    L = tiny_kit.config.canvas_length
    canvas = seed_canvas(L, tiny_kit.config.vocab_size)
    prompt = tiny_kit.tokenizer.encode("ROMEO:\nBut soft, what light", add_special_tokens=True)
    whole = client.generate(input_ids=prompt, initial_canvas=canvas, max_new_tokens=L, eos_token_ids=[])
    in_process = tiny_vllm.generate(input_ids=prompt, initial_canvas=canvas, max_new_tokens=L, eos_token_ids=[])
    assert whole.path == "vllm-server" and whole.token_ids.tolist() == in_process.token_ids.tolist()
    assert whole.denoising_steps == in_process.denoising_steps  # from the server's /metrics

    streamed = client.generate("ROMEO:\n", max_new_tokens=2 * L + 10, eos_token_ids=(), stream=True)
    assert streamed.token_ids.shape == (1, 2 * L + 10)
    assert "streamed: [3] chunk(s) per row" in streamed.notes  # one chunk per committed canvas
    assert 0 < streamed.timings.first_canvas_s < streamed.timings.total_s  # the first chunk came first

    process = server.process
    server.stop()
    assert process.poll() is not None and _get(server.url + "/health", timeout=2) is None
    with pytest.raises(EngineError, match="no vLLM server answers"):
        VLLMServerClient(server.url, TINY)


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, todo = set(), [pid]
    while todo:
        below = todo.pop()
        kids = [p for p, parent in parents.items() if parent == below and p not in found]
        found.update(kids)
        todo += kids
    return found


STOPPED_WITHIN_S = 60  # SIGTERM -> the tree, the port and the temporary directory gone (STOP_GRACE_S is 30)


def test_sigterm_to_vllm_serve_leaves_no_process_no_port_and_no_file(tmp_path):
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "dgemma_helpers", "vllm-serve", "--model", str(TINY), "--steps",
                             str(STEPS), "--port", str(port)], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 900
        while _get(f"http://127.0.0.1:{port}/health", timeout=2) is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(1)
        tree = descendants(proc.pid)
        assert len(tree) >= 2  # the API server and its EngineCore at least
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("dgemma-vllm-")]
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=STOPPED_WITHIN_S)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    while any(alive(p) for p in tree) and time.monotonic() < t + STOPPED_WITHIN_S:
        time.sleep(0.2)
    assert not [p for p in tree if alive(p)] and port_free(port)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("dgemma-vllm-")]


def test_the_cli_generates_through_vllm():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "dgemma_helpers", "generate", "--engine", "vllm", "--model", str(TINY),
                          "--prompt", "ROMEO:\n", "--max-new-tokens", "70", "--steps", "4"],
                         capture_output=True, text=True, env=env, timeout=900, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() and "path: vllm" in out.stderr and "tokens per forward:" in out.stderr


def test_the_benchmark_runs_both_vllm_engines(tmp_path):
    sweep = bench.make_sweep(str(TINY), "vllm,vllm-server", "64", "4", "1,2", "1000", repeats=1, warmup=1)
    results = bench.run_benchmark(sweep, progress=lambda msg: None)
    assert {e["name"]: e["status"] for e in results["engines"]} == {"vllm": "ok", "vllm-server": "ok"}
    rows = [r for r in results["rows"] if r["status"] == "ok"]
    assert {(r["engine"], r["batch"]) for r in rows} == {(e, b) for e in ("vllm", "vllm-server") for b in (1, 2)}
    for r in rows:
        assert r["tokens"] == 64 * r["batch"]  # EOS ignored: the same work as every engine
        assert r["tokens_per_s"] > 0 and r["tokens_per_forward"] > 0 and r["steps_per_canvas"] >= 1
        assert 0 < r["first_token_ms"] <= r["latency_ms"]
        assert r["ms_per_step"] is None and r["peak_mem_mb"] is None  # vLLM does not report them
    bench.write_results(results, tmp_path)


def test_an_engine_whose_counters_another_took_says_so(tiny_vllm):
    # The benchmark above started (and closed) an in-process engine after this module's: vLLM's
    # process-wide counters went with it, and the result says so rather than counting zero.
    r = tiny_vllm.generate("ROMEO:\n", max_new_tokens=8)
    assert r.token_ids.shape == (1, 8) and r.denoising_steps is None and r.num_forwards is None
    assert any("counters belong to the engine started last" in n for n in r.notes)
