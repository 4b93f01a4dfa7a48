"""Every plot of the kit, one module per subject, all in the look of style.py:

    denoising.py   a DenoisingTrace (notebook 04): accepted tokens, entropy, lock-in, tokens per
                   forward, and the GIF/MP4 animation behind trace.save_gif / save_mp4
    anatomy.py     the model's parameters and expert routing (notebook 02)
    sweep.py       the sampler sweep (notebook 03)
    benchmark.py   the benchmark report's figures (notebook 05, dg.bench.PLOTS / save_plots)
    style.py       the shared palette, font sizes, titles and legends

    from dgemma_helpers import plots
    plots.entropy_heatmap(trace)            # every plot function is reachable from here

Each function returns a matplotlib Figure built without pyplot. matplotlib (the dev extra) is imported
when a plot module is first used, never by `import dgemma_helpers`.
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
