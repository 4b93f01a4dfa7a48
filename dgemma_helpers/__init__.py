"""dgemma_helpers: run, watch and measure DiffusionGemma, the block-diffusion text model.

    import dgemma_helpers as dg
    model = dg.load_model("models/dgemma-tiny")
    result = dg.generate(model, "Why is the sky blue?", max_new_tokens=512, seed=0)
    print(result.text, result.tokens_per_forward)
"""

import importlib as _importlib
import logging as _logging
import sys as _sys

from .cache import KVCache
from .checkpoint import load_model, save_checkpoint
from .config import GenerationSettings, ModelConfig
from .errors import CheckpointError, DeviceError, DGemmaError, InputError, MissingToolError, TraceError
from .fast.quant import quantize_experts
from .generation import GenerationResult, StepRecord, Timings, generate
from .memory import MemoryEstimate, estimate_memory
from .model import DiffusionGemma
from .model_paths import find_model

__version__ = "0.1.0"

# The engine and the public face load with the package; the rest (benchmarks, notebooks' helpers,
# the player, training) on first use, so that `import dgemma_helpers` needs neither matplotlib nor
# anywidget nor papermill (tests/test_cli_and_packaging.py checks sys.modules).
_SUBPACKAGES = ("benchmarks", "fast", "notebook", "plots", "sft", "train", "visualization")
_RENAMED = {"bench": "benchmarks"}  # the old name, so that users' `dg.bench` keeps working
_LAZY_NAMES = {"DenoisingTrace": "visualization", "DenoisingPlayer": "visualization", "finetune": "sft"}


def __getattr__(name: str):
    name = _RENAMED.get(name, name)
    if name in _SUBPACKAGES:
        return _importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(_importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
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
    "CheckpointError", "DGemmaError", "DenoisingTrace", "DeviceError", "DiffusionGemma", "GenerationResult",
    "GenerationSettings", "InputError", "KVCache", "MemoryEstimate", "MissingToolError", "ModelConfig", "StepRecord", "Timings",
    "TraceError", "bench", "benchmarks", "estimate_memory", "fast", "find_model", "finetune", "generate", "load_model",
    "notebook", "plots", "quantize_experts", "save_checkpoint", "sft", "visualization",
]
