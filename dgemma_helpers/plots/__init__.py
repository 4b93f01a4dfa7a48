"""Every plot of the kit, one module per subject, in the look of style.py: denoising.py (a DenoisingTrace,
notebook 04, and its GIF/MP4), anatomy.py (parameters and routing, 02), sweep.py (the sampler sweep, 03),
benchmark.py (the benchmark report, 05). Every function is reachable from here (`plots.entropy_heatmap`)
and returns a Figure built without pyplot; matplotlib loads on first use, never with `import dgemma_helpers`.
"""

import importlib as _importlib

_MODULES = ("anatomy", "benchmark", "denoising", "style", "sweep")
_FUNCTIONS = {
    "accepted_per_round": "denoising", "entropy_heatmap": "denoising", "lock_in_order": "denoising",
    "tokens_per_forward": "denoising", "overview": "denoising", "animate": "denoising",
    "plot_parameters": "anatomy", "plot_routing": "anatomy", "plot_token_routing": "anatomy",
    "plot_sweep": "sweep",
    "plot_tokens_per_s": "benchmark", "plot_speedup_vs_ar": "benchmark", "plot_quality_tradeoff": "benchmark",
    "plot_ms_per_step": "benchmark", "PLOTS": "benchmark", "save_plots": "benchmark",
}


def __getattr__(name: str):
    if name in _MODULES:
        return _importlib.import_module(f".{name}", __name__)
    if name in _FUNCTIONS:
        return getattr(_importlib.import_module(f".{_FUNCTIONS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_FUNCTIONS)
