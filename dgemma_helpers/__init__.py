"""dgemma_helpers: run, watch and measure DiffusionGemma, the block-diffusion text model.

    import dgemma_helpers as dg
    model = dg.load_model("models/dgemma-tiny")
    result = dg.generate(model, "Why is the sky blue?", max_new_tokens=512, seed=0)
    print(result.text, result.tokens_per_forward)
"""

import logging as _logging
import sys as _sys

from .autoregressive import ARResult, continuation_nll, generate_autoregressive
from .cache import KVCache
from .checkpoint import load_model, save_checkpoint
from .config import GenerationSettings, ModelConfig
from .environment import environment_report, find_model
from .errors import CheckpointError, DeviceError, DGemmaError, InputError, MissingToolError, TraceError
from .generation import GenerationResult, StepRecord, Timings, denoise_step, generate
from .quant import quantize_experts
from .infill import InfillCanvas, infill_canvas
from .introspection import expert_routing, layer_pattern, parameter_counts, weight_sharing
from .model import DiffusionGemma
from .sweep import RoundLog, SweepRow, sampler_sweep
from .trace import DenoisingTrace

__version__ = "0.1.0"


def __getattr__(name: str):
    # dg.DenoisingPlayer needs anywidget/ipywidgets and dg.plots matplotlib (the dev extra): imported on first
    # use only, and left out of __all__ so that `import *` works without them.
    import importlib

    if name == "DenoisingPlayer":
        return importlib.import_module(".widget", __name__).DenoisingPlayer
    if name == "plots":
        return importlib.import_module(".plots", __name__)
    raise AttributeError(f"module 'dgemma_helpers' has no attribute {name!r}")


# A library logger that prints its one-line notes (e.g. "skipped the vision tower") unless the
# application configures logging itself.
class _StderrHandler(_logging.StreamHandler):
    """Writes to whatever sys.stderr is now (notebooks and test runners replace it)."""

    @property
    def stream(self):
        return _sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


_log = _logging.getLogger("dgemma_helpers")
if not _log.handlers:
    _handler = _StderrHandler()
    _handler.setFormatter(_logging.Formatter("dgemma_helpers: %(message)s"))
    _log.addHandler(_handler)
    _log.setLevel(_logging.INFO)
    _log.propagate = False

__all__ = [
    "ARResult", "continuation_nll", "generate_autoregressive",
    "CheckpointError", "DGemmaError", "DenoisingTrace", "DeviceError", "DiffusionGemma", "GenerationResult",
    "GenerationSettings", "InfillCanvas", "InputError", "KVCache", "MissingToolError", "ModelConfig", "RoundLog",
    "StepRecord", "SweepRow", "Timings", "TraceError", "denoise_step", "environment_report", "expert_routing",
    "find_model", "generate", "infill_canvas", "layer_pattern", "load_model", "parameter_counts", "quantize_experts",
    "sampler_sweep", "save_checkpoint", "weight_sharing",
]
