"""The environment report (environment.py): facts, model entries, and a fix for every gap."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

import dgemma_helpers as dg
from dgemma_helpers.notebook.environment import (
    DOWNLOAD_COMMAND, GPU, EnvironmentReport, describe_model, find_model, format_report, gpu_check,
)

GiB = 2**30


def test_report_describes_this_machine_and_a_given_model(checkpoint, ours, tmp_path):
    path = checkpoint("plain")
    r = dg.notebook.environment_report([path], tiny_path=tmp_path / "models" / "dgemma-tiny", official_path=tmp_path / "none")
    assert r.versions["torch"] == importlib.metadata.version("torch")
    assert r.versions["transformers"] == importlib.metadata.version("transformers")
    assert r.torch_cuda == torch.version.cuda
    assert len(r.gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    given = r.model("given")
    model = ours(path)
    assert given.found and given.problem is None and given.untrained
    assert given.parameters == model.num_parameters()
    assert given.active_parameters == model.num_parameters(active=True)
    assert given.disk_bytes == (path / "model.safetensors").stat().st_size
    if not r.gpus:
        assert given.runs_on == "cpu (float32)"
        gpu = next(c for c in r.checks if c.topic == "GPU")
        assert not gpu.ok and "CPU" in gpu.fix and "dgemma-tiny" in gpu.fix
    assert "UNTRAINED" in str(r)


def test_every_missing_model_gets_a_fix(tmp_path):
    r = dg.notebook.environment_report([tmp_path / "nowhere"], tiny_path=tmp_path / "models" / "dgemma-tiny",
                              official_path=tmp_path / "official")
    checks = {c.topic: c for c in r.checks}
    tiny, official = checks["tiny model"], checks["official checkpoint"]
    assert not tiny.ok and "make-random" in tiny.fix and "hf download" in tiny.fix
    assert not official.ok and DOWNLOAD_COMMAND in official.fix
    given = next(c for c in r.checks if c.topic.startswith("model "))
    assert not given.ok and "hf download" in given.fix
    assert all(c.fix for c in r.gaps())
    text = format_report(r)
    assert all(c.fix in text for c in r.gaps())


def test_a_broken_model_directory_is_reported_not_raised(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    entry = describe_model("given", tmp_path / "broken", [], 8 * GiB)
    assert entry.found and entry.parameters is None and "not valid JSON" in entry.problem


def test_where_a_model_runs_depends_on_memory_and_gpu(checkpoint):
    path = checkpoint("plain")
    on_cpu = describe_model("given", path, [], ram_free=64 * GiB)
    assert on_cpu.runs_on == "cpu (float32)" and on_cpu.need_bytes > 0
    too_small = describe_model("given", path, [], ram_free=1024)
    assert too_small.runs_on is None and "needs a GPU" in too_small.problem
    old_gpu = GPU(index=0, name="old", capability=(7, 5), total_bytes=16 * GiB, free_bytes=16 * GiB)
    assert describe_model("given", path, [old_gpu], ram_free=None).runs_on == "cuda:0 (float16)"
    full_gpu = GPU(index=1, name="busy", capability=(9, 0), total_bytes=80 * GiB, free_bytes=1024)
    entry = describe_model("given", path, [full_gpu], ram_free=None)
    assert entry.runs_on is None and "free GPU memory" in entry.problem


@pytest.mark.parametrize("cuda, gpus, words", [
    (None, [], "no GPU"),
    ("12.4", [], "sees no GPU"),
    ("12.4", [GPU(0, "H100", (9, 0), 80 * GiB, 79 * GiB)], "H100"),
])
def test_gpu_check(cuda, gpus, words):
    r = EnvironmentReport(python="3", system="Linux", versions={"torch": "x"}, torch_cuda=cuda, cpu_cores=2,
                          ram_total_bytes=None, ram_free_bytes=None, gpus=gpus, models=[])
    check = gpu_check(r)
    assert words in check.detail
    assert check.ok == bool(gpus) and (check.ok or check.fix)


def test_find_model_looks_above_the_notebook_directory(tmp_path, monkeypatch):
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert find_model("models/m") == tmp_path / "models" / "m"
    assert find_model(tmp_path / "models" / "m") == tmp_path / "models" / "m"
    with pytest.raises(dg.CheckpointError, match="make-random") as e:
        find_model("models/dgemma-tiny-missing/dgemma-tiny")
    assert "hf download" in str(e.value) and "notebooks" in str(e.value)
