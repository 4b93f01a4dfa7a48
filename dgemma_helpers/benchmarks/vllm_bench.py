"""The benchmark engines "vllm" (vllm.LLM in this process) and "vllm-server" (a vLLM server on
127.0.0.1, queried with streaming through the openai client).

vLLM fixes the entropy bound, the step count and adaptive stopping when it starts, so the engine
starts once per (entropy bound, steps) pair, in the untimed `configure()`. What vLLM does not report
is left empty rather than guessed: ms per step and peak memory (its engine runs in other processes).
Seeds are not applied (vLLM rejects them). The prefix cache is off: the kit has none, and the sweep
repeats its prompts.
"""

from __future__ import annotations

import importlib.util
import math

import torch

from ..engines.vllm import VLLMEngine, vllm_status
from ..engines.vllm_server import VLLMServer
from .engines import Engine, Measurement, ModelPool, Prompts, _diffusion_weights_bytes
from .grid import GridPoint, Sweep


class VLLMBenchEngine(Engine):
    name = "vllm"
    description = "vLLM's DiffusionGemma, in-process vllm.LLM (per-request seeds not supported)"
    in_process_memory = False

    def available(self, sweep: Sweep) -> tuple[bool, str]:
        usable, why = vllm_status()
        return usable, "" if usable else why  # when usable the engines table shows the description

    def prepare(self, sweep: Sweep, pool: ModelPool) -> None:
        self.sweep, self.engine, self.key = sweep, None, None

    def configure(self, config: GridPoint) -> None:
        key = (config.entropy_bound, config.steps)
        if key != self.key:
            self.release()
            self.engine = self._start(config)
            self.key = key

    def _settings(self, config: GridPoint) -> dict:
        args = dict(enable_prefix_caching=False, **self.sweep.vllm_args)  # (the sweep refuses sampler keys there)
        args.update(max_denoising_steps=config.steps, entropy_bound=config.entropy_bound)
        if not self.sweep.early_stop:
            args.update(confidence_threshold=0.0)
        return args

    def _start(self, config: GridPoint):
        return VLLMEngine(self.sweep.model, **self._settings(config))

    def _generate(self, prompts: Prompts, config: GridPoint):
        return self.engine.generate(input_ids=prompts.ids, max_new_tokens=config.max_new_tokens,
                                    eos_token_ids=() if self.sweep.ignore_eos else None)

    def run(self, prompts: Prompts, config: GridPoint, seed: int) -> Measurement:
        self.configure(config)  # a no-op after the harness's own call; starts an engine if run alone
        r = self._generate(prompts, config)
        pad = r.settings.pad_token_id
        first = r.timings.first_canvas_s
        steps = r.mean_steps_per_canvas if r.mean_steps_per_canvas is not None else math.nan
        return Measurement(tokens=int((r.token_ids != pad).sum()), forwards=0, step_s=0.0,  # no time per step
                           first_canvas_s=first, first_token_s=first, tokens_per_forward=r.tokens_per_forward,
                           steps_per_canvas=steps, texts=r.texts, token_ids=r.token_ids.tolist())

    def release(self) -> None:
        engine, self.engine, self.key = getattr(self, "engine", None), None, None
        if engine is not None:
            engine.close()

    def weights_bytes(self, sweep: Sweep) -> int:
        # On a GPU vLLM claims gpu_memory_utilization of it (0.9 unless set): it never fits beside another
        # engine, so the harness runs it on its own. On a CPU its share of RAM is small.
        if torch.cuda.is_available():
            share = sweep.vllm_args.get("gpu_memory_utilization", 0.9)
            return int(share * torch.cuda.get_device_properties(0).total_memory)
        return _diffusion_weights_bytes(sweep)


class VLLMServerBenchEngine(VLLMBenchEngine):
    name = "vllm-server"
    description = ("a vLLM server on 127.0.0.1 started for the run, queried with streaming via the openai client "
                   "(first token = first streamed chunk)")

    def available(self, sweep: Sweep) -> tuple[bool, str]:
        usable, why = super().available(sweep)
        if usable and importlib.util.find_spec("openai") is None:
            return False, "the openai package is not installed: pip install openai (`make setup-vllm` has it)"
        return usable, why

    def _start(self, config: GridPoint):
        server = VLLMServer(self.sweep.model, **self._settings(config)).start()
        self.client = server.client()
        return server

    def _generate(self, prompts: Prompts, config: GridPoint):
        return self.client.generate(input_ids=prompts.ids, max_new_tokens=config.max_new_tokens,
                                    eos_token_ids=() if self.sweep.ignore_eos else None, stream=True)
