"""What this machine has and what it can run, with the fix for every gap (notebook 01).

`environment_report()` gathers the facts (torch and its CUDA build, GPUs, RAM, package versions, the
models found locally and whether each fits here) and the `Check`s; printing it gives format_report().
Nothing is downloaded and no weights are read: a model is judged by its config.json and file headers.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import index_checkpoint, read_config, runtime_bytes, weights_bytes
from ..config import ModelConfig
from ..devices import available_memory
from ..errors import CheckpointError, DGemmaError
from ..generation import select_path
from ..model_paths import (DOWNLOAD_COMMAND, OFFICIAL_CANDIDATES, TINY_MODEL, find_model, hub_cache_snapshots,
                           missing_model_message, model_candidates)
from .introspection import parameter_counts

INSTALL_COMMAND = "pip install -e '.[dev]'  (or `make setup` from the repository root)"
# What the notebooks need besides the engine's dependencies (a report flags the missing ones), then the
# GPU kernels' compiler.
NOTEBOOK_PACKAGES = ("matplotlib", "ipykernel", "anywidget", "papermill", "nbval")
PACKAGES = ("torch", "transformers", "safetensors", "tokenizers", "numpy", *NOTEBOOK_PACKAGES, "triton")
GiB = 2**30


# ---- the facts -----------------------------------------------------------------------------------------
@dataclass
class GPU:
    index: int
    name: str
    capability: tuple[int, int]
    total_bytes: int
    free_bytes: int

    @property
    def bf16(self) -> bool:  # bfloat16 matmuls (and the grouped expert GEMMs) need sm80+
        return self.capability >= (8, 0)


@dataclass
class ModelEntry:
    label: str  # "tiny", "official" or "given"
    path: Path
    found: bool
    problem: str | None = None  # why it cannot be loaded, with the fix
    untrained: bool = False
    config: ModelConfig | None = None
    parameters: int | None = None
    active_parameters: int | None = None
    disk_bytes: int | None = None
    runs_on: str | None = None  # "cuda:0 (bfloat16)" / "cpu (float32)"; None: fits nowhere here
    need_bytes: int | None = None  # on the best device here, weights + working memory


@dataclass
class Check:
    topic: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class EnvironmentReport:
    python: str
    system: str
    versions: dict[str, str | None]  # distribution -> version, None when not installed
    torch_cuda: str | None  # the CUDA version torch was built with; None for a CPU build
    cpu_cores: int
    ram_total_bytes: int | None
    ram_free_bytes: int | None
    gpus: list[GPU]
    models: list[ModelEntry]
    checks: list[Check] = field(default_factory=list)

    def model(self, label: str) -> ModelEntry:
        for m in self.models:
            if m.label == label:
                return m
        raise KeyError(f"no model labelled {label!r}; labels: {[m.label for m in self.models]}")

    def gaps(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def __str__(self) -> str:
        return format_report(self)


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def list_gpus() -> list[GPU]:
    gpus = []
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(GPU(i, torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i), total, free))
    return gpus


def ram_total() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def describe_model(label: str, path: str | os.PathLike, gpus: Sequence[GPU], ram_free: int | None,
                   looked_in: Sequence[Path] = ()) -> ModelEntry:
    """What a model directory holds and where it would run, from its config and headers only."""
    p = Path(path).expanduser()
    entry = ModelEntry(label=label, path=p, found=p.exists())
    if not entry.found:
        entry.problem = missing_model_message(path, looked_in or [p])
        return entry
    try:
        _, config = read_config(p)
        files = {e.file for e in index_checkpoint(p).values()}
    except DGemmaError as e:
        entry.problem = str(e)
        return entry
    counts = parameter_counts(config)
    entry.config, entry.parameters, entry.active_parameters = config, counts.total, counts.active
    entry.disk_bytes = sum(f.stat().st_size for f in files)
    entry.untrained = (p / "dgemma_random.json").exists()
    # load_model's own estimate, on the best device here: the GPU with the most free memory, else the CPU.
    best = max(gpus, key=lambda g: g.free_bytes, default=None)
    device, dtype, free = ((f"cuda:{best.index}", torch.bfloat16 if best.bf16 else torch.float16, best.free_bytes)
                           if best else ("cpu", torch.float32, ram_free))
    entry.need_bytes = weights_bytes(config, dtype) + runtime_bytes(config, dtype, device)
    if free is None or entry.need_bytes <= free:
        entry.runs_on = f"{device} ({str(dtype).replace('torch.', '')})"
    else:
        entry.problem = (f"needs about {entry.need_bytes / GiB:.1f} GiB on {device} but {free / GiB:.1f} GiB is free: "
                         + ("free GPU memory or use a larger GPU." if best else
                            "it needs a GPU (an 80 GB H100 holds the official checkpoint in bfloat16), or try "
                            "load_model(..., dtype='bfloat16') to halve its weights."))
    return entry


def environment_report(model_paths: Sequence[str | os.PathLike] = (), *, tiny_path: str | os.PathLike = TINY_MODEL,
                       official_path: str | os.PathLike | None = None) -> EnvironmentReport:
    """Gather the facts and the checks. `model_paths`: more model directories to look at;
    `official_path`: where the official checkpoint is (default: ~/models/diffusiongemma, then the
    local Hugging Face cache)."""
    gpus = list_gpus()
    ram_free = available_memory(torch.device("cpu"))
    tiny_candidates = model_candidates(tiny_path)
    tiny_dir = next((c for c in tiny_candidates if c.exists()), tiny_path)
    models = [describe_model("tiny", tiny_dir, gpus, ram_free, looked_in=tiny_candidates)]
    official_dirs = ([Path(official_path).expanduser()] if official_path is not None else
                     [Path(c).expanduser() for c in OFFICIAL_CANDIDATES] + hub_cache_snapshots())
    found = next((d for d in official_dirs if d.exists()), official_dirs[0])
    models.append(describe_model("official", found, gpus, ram_free))
    for p in model_paths:  # more directories, unless one is the tiny or official model already listed
        try:
            where = find_model(p, local_files_only=True)  # a Hub id counts where it is cached: a report never downloads
        except CheckpointError:
            where = Path(p).expanduser()
        if all(where.resolve() != m.path.resolve() for m in models):
            models.append(describe_model("given", where, gpus, ram_free))
    report = EnvironmentReport(
        python=platform.python_version(), system=f"{platform.system()} {platform.machine()}",
        versions=package_versions(), torch_cuda=torch.version.cuda, cpu_cores=os.cpu_count() or 1,
        ram_total_bytes=ram_total(), ram_free_bytes=ram_free, gpus=gpus, models=models)
    report.checks = run_checks(report)
    return report


# ---- the checks ---------------------------------------------------------------------------------------
def run_checks(r: EnvironmentReport) -> list[Check]:
    missing = [n for n in NOTEBOOK_PACKAGES if r.versions.get(n) is None]
    return [
        Check("torch", True, f"torch {r.versions['torch']} "
              + (f"(CUDA {r.torch_cuda} build)" if r.torch_cuda else "(CPU-only build)")),
        gpu_check(r),
        *(Check(f"bfloat16 on cuda:{gpu.index}", False,
                f"{gpu.name} is sm{gpu.capability[0]}{gpu.capability[1]}: no bfloat16 matmuls",
                "load with dtype='float16' (or 'float32' for small models).") for gpu in r.gpus if not gpu.bf16),
        *(model_check(m) for m in r.models),
        Check("notebook packages", not missing, "all installed" if not missing else f"missing: {', '.join(missing)}",
              f"install them: {INSTALL_COMMAND}" if missing else ""),
        path_check(r),  # (no triton check: the installed versions list it, and this one names it where it is missing)
    ]


def path_check(r: EnvironmentReport) -> Check:
    """Which denoising step generate(path=None) runs on this machine's default device, and why."""
    device = torch.device("cuda:0" if r.gpus else "cpu")
    chosen, reason = select_path(None, device, "counter", 0)
    if chosen == "fast":
        return Check("denoising path", True, f"fast: fused Triton kernels + a CUDA graph on {device}")
    if device.type == "cpu":  # the PyTorch step is the CPU path: nothing to fix
        return Check("denoising path", True, f"torch: the PyTorch step ({reason})")
    return Check("denoising path", False, f"torch on {device}: {reason}",
                 "pip install triton (the GPU kernels need it), or keep the PyTorch step (path='torch').")


def gpu_check(r: EnvironmentReport) -> Check:
    if r.gpus:
        names = "; ".join(f"cuda:{g.index} {g.name}, {g.free_bytes / GiB:.1f} of {g.total_bytes / GiB:.1f} GiB free"
                          for g in r.gpus)
        return Check("GPU", True, names)
    cpu_fix = f"the CPU runs {TINY_MODEL} (every notebook); the official checkpoint needs a GPU with about 50 GB free"
    if r.torch_cuda is None and shutil.which("nvidia-smi"):
        return Check("GPU", False, "nvidia-smi exists but torch is a CPU-only build",
                     "install a CUDA build of torch (or use the vLLM image, whose torch `make setup` keeps); "
                     f"meanwhile {cpu_fix}.")
    if r.torch_cuda is not None:
        return Check("GPU", False, f"torch is built for CUDA {r.torch_cuda} but sees no GPU",
                     "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES; meanwhile " + cpu_fix + ".")
    return Check("GPU", False, "no GPU: CPU only", cpu_fix[0].upper() + cpu_fix[1:] + ".")


def model_check(m: ModelEntry) -> Check:
    topic = {"tiny": "tiny model", "official": "official checkpoint"}.get(m.label, f"model {m.path}")
    if not m.found:
        fix = (f"download it: `{DOWNLOAD_COMMAND}` (about 50 GB), then pass official_path / model_path"
               if m.label == "official" else m.problem)
        return Check(topic, False, f"not found at {m.path}", fix or "")
    if m.parameters is None:
        return Check(topic, False, f"{m.path} cannot be loaded", m.problem or "")
    scale, unit, disk, disk_unit = (1e6, "M", 2**20, "MiB") if m.parameters < 1e9 else (1e9, "B", GiB, "GiB")
    size = (f"{m.parameters / scale:,.1f}{unit} parameters ({m.active_parameters / scale:,.1f}{unit} active), "
            f"{m.disk_bytes / disk:.1f} {disk_unit} on disk")
    note = ", UNTRAINED (random weights: its text is noise)" if m.untrained else ""
    if m.runs_on is None:
        return Check(topic, False, f"{m.path}: {size}{note}", m.problem or "")
    return Check(topic, True, f"{m.path}: {size}{note}; runs here on {m.runs_on}")


# ---- the printer -----------------------------------------------------------------------------------------
def format_report(r: EnvironmentReport) -> str:
    def gib(n: int | None) -> str:
        return "?" if n is None else f"{n / GiB:.1f} GiB"

    versions = ", ".join(f"{k} {v}" for k, v in r.versions.items() if v is not None)
    absent = ", ".join(k for k, v in r.versions.items() if v is None)
    lines = [
        "DiffusionGemma kit: this machine",
        f"  Python {r.python} on {r.system}, {r.cpu_cores} CPU cores, {gib(r.ram_total_bytes)} RAM "
        f"({gib(r.ram_free_bytes)} free)",
        f"  installed: {versions}",
    ]
    if absent:
        lines.append(f"  not installed: {absent}")
    lines.append("  GPUs: " + ("none" if not r.gpus else "; ".join(
        f"cuda:{g.index} {g.name} (sm{g.capability[0]}{g.capability[1]}, {gib(g.total_bytes)})" for g in r.gpus)))
    lines += ["", "What runs here:"]
    for c in r.checks:
        lines.append(f"  {'✓' if c.ok else '✗'} {c.topic}: {c.detail}")
        if c.fix:
            lines.append(f"      fix: {c.fix}")
    return "\n".join(lines)
