"""Benchmarks: engines side by side on one machine, in one run; diffusion vs autoregressive.

    results = benchmarks.run_benchmark(benchmarks.make_sweep("models/dgemma-tiny", engines="kit,ar"))
    benchmarks.write_results(results, "out/"); benchmarks.save_plots(results, "out/")
"""

from ..plots.benchmark import PLOTS, save_plots
from .command import make_sweep
from .engines import (ENGINES, Engine, Measurement, ModelPool, Prompts, VLLMBenchEngine, VLLMServerBenchEngine,
                      register_engine)
from .grid import GridPoint, Sweep, parse_list
from .harness import ROW_FIELDS, machine_info, run_benchmark
from .notebook import default_report_dir, make_report
from .report import engines_table, load_results, machine_summary, markdown_table, results_table, write_results
from .shapes import SHAPES, shape_checkpoint

__all__ = [
    "GridPoint", "ENGINES", "Engine", "Measurement", "ModelPool", "PLOTS", "Prompts", "ROW_FIELDS", "Sweep",
    "default_report_dir", "engines_table", "load_results", "machine_info", "machine_summary", "make_report",
    "make_sweep", "markdown_table", "parse_list", "register_engine", "results_table", "run_benchmark", "save_plots",
    "SHAPES", "shape_checkpoint", "VLLMBenchEngine", "VLLMServerBenchEngine", "write_results",
]
