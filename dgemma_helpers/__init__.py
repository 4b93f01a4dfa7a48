"""dgemma_helpers: run, watch and measure DiffusionGemma, the block-diffusion text model.

    import dgemma_helpers as dg
    model = dg.load_model("models/dgemma-tiny")
    result = dg.generate(model, "Why is the sky blue?", max_new_tokens=512, seed=0)
    print(result.text, result.tokens_per_forward)
"""

import logging as _logging
import sys as _sys

from . import bench, fast, notebook, visualization
from .cache import KVCache
from .checkpoint import load_model, save_checkpoint
from .config import GenerationSettings, ModelConfig
from .errors import CheckpointError, DeviceError, DGemmaError, InputError, MissingToolError, TraceError
from .fast.quant import quantize_experts
from .generation import GenerationResult, StepRecord, Timings, generate
from .memory import MemoryEstimate, estimate_memory
from .model import DiffusionGemma
from .model_paths import find_model
from .visualization import DenoisingTrace

__version__ = "0.1.0"


def __getattr__(name: str):
    # dg.DenoisingPlayer needs anywidget/ipywidgets and dg.train the training extras: imported on first use
    # only, and left out of __all__ so that `import *` works without them.
    import importlib

    if name == "DenoisingPlayer":
        return visualization.DenoisingPlayer
    if name == "train":
        return importlib.import_module(".train", __name__)
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
    "TraceError", "bench", "estimate_memory", "fast", "find_model", "generate", "load_model", "notebook", "quantize_experts",
    "save_checkpoint", "visualization",
]
