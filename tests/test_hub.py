"""Hugging Face Hub ids (dgemma_helpers/hub.py): load_model, find_model and --model take "org/name".

Each test builds a real hub cache on disk (models--org--name/{blobs,refs,snapshots/COMMIT}, files
as symlinks into blobs/, the layout `hf download` writes) from a small random checkpoint, and
huggingface_hub itself resolves ids in it. Nothing touches the network: conftest.py sets
HF_HUB_OFFLINE=1 for every test, and the download branch runs against huggingface_hub's
snapshot_download replaced by a stand-in that "downloads" from a local copy of the repo."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants, errors
from huggingface_hub import snapshot_download as real_snapshot_download
from huggingface_hub.utils import filter_repo_objects

import dgemma_helpers as dg
import dgemma_helpers.checkpoint as checkpoint_module
from dgemma_helpers import CheckpointError, DeviceError, InputError, hub
from dgemma_helpers.checkpoint import read_config
from dgemma_helpers.model_paths import find_model, hub_cache_snapshots
from dgemma_helpers.notebook.environment import environment_report

REPO = "org/name"
MAIN, PINNED = "a" * 40, "b" * 40  # commit hashes: the ones on refs/main and on refs/v2
ROOT = Path(__file__).resolve().parents[1]


def add_snapshot(cache: Path, repo: str, source: Path, commit: str, refs: tuple[str, ...] = ("main",),
                 files: list[str] | None = None) -> Path:
    """Put `source`'s files (or those named) into the hub cache as commit `commit` of `repo`."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snapshot, blobs = repo_dir / "snapshots" / commit, repo_dir / "blobs"
    snapshot.mkdir(parents=True, exist_ok=True)
    blobs.mkdir(exist_ok=True)
    for name in files if files is not None else sorted(p.name for p in source.iterdir()):
        if (snapshot / name).exists():
            continue
        blob = blobs / hashlib.sha256((source / name).read_bytes()).hexdigest()
        shutil.copyfile(source / name, blob)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache that huggingface_hub uses (it reads HF_HUB_CACHE once, at import)."""
    root = tmp_path / "hf" / "hub"
    root.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root


@pytest.fixture()
def downloads(cache, checkpoint, monkeypatch, tmp_path) -> list[dict]:
    """Downloads allowed, with huggingface_hub's snapshot_download standing in for the Hub: a cache
    lookup (local_files_only) is the real one; a download copies the files that allow_patterns
    selects, by huggingface_hub's own filter, from a local "remote" repo into the cache. Returns the
    list of downloads asked for."""
    remote = tmp_path / "remote"
    shutil.copytree(checkpoint("plain"), remote)
    (remote / "pytorch_model.bin").write_bytes(b"a pickle the kit never reads")  # what the patterns leave out
    calls: list[dict] = []

    def fake(repo_id, *, revision=None, allow_patterns=None, local_files_only=False, **kw):
        if local_files_only:
            return real_snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns,
                                          local_files_only=True, **kw)
        calls.append(dict(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns))
        names = list(filter_repo_objects(sorted(p.name for p in remote.iterdir()), allow_patterns=allow_patterns))
        return str(add_snapshot(cache, repo_id, remote, MAIN, files=names))

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "snapshot_download", fake)
    return calls


def test_tests_never_download():
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.is_offline_mode()


@pytest.mark.parametrize("spelled, expected", [
    ("google/diffusiongemma-26B-A4B-it", ("google/diffusiongemma-26B-A4B-it", None)),
    ("hf://org/name@" + PINNED, (REPO, PINNED)),
    ("hf://org/name@refs/pr/3", (REPO, "refs/pr/3")),
    ("https://huggingface.co/org/name", (REPO, None)),
    ("models/dgemma-tiny", None), ("datasets/org", None),  # the Hub's type prefixes are never a namespace
    ("name", None),  # a bare name is a relative path, not an id
    ("a/b/c", None), ("/abs/org/name", None), ("~/org/name", None), ("org/na--me", None), ("./org", None),
])
def test_what_reads_as_a_hub_id(spelled, expected):
    found = hub.hub_model(spelled)
    assert (None if found is None else (found.repo_id, found.revision)) == expected


@pytest.mark.parametrize("spelled, revision, words", [
    ("hf://datasets/org/name", None, "a Hugging Face dataset, not a model"),
    ("hf://org/name/config.json", None, "a file in a Hugging Face model"),
    ("hf://org", None, "neither a local path nor a Hugging Face Hub address"),
    ("hf://org/name@v1", "v2", "pins revision 'v1' but revision='v2'"),
    ("/no/such/dir", "main", "is not a Hub model id: drop revision"),
    (REPO, "", "non-empty str"),
])
def test_bad_ids_and_revisions_are_refused(spelled, revision, words):
    with pytest.raises(InputError, match=words):
        dg.load_model(spelled, revision=revision)


def test_an_id_in_the_hub_cache_loads_offline(cache, checkpoint):
    snapshot = add_snapshot(cache, REPO, checkpoint("plain"), MAIN)
    model = dg.load_model(REPO, device="cpu")
    assert model.path == snapshot
    direct = dg.load_model(checkpoint("plain"), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), direct.state_dict().values()))
    kwargs = dict(max_new_tokens=16, max_denoising_steps=2, seed=0)
    ours, theirs = (dg.generate(m, "The sky", **kwargs).token_ids for m in (model, direct))
    assert torch.equal(ours, theirs)
    assert model.tokenizer is not None and model.tokenizer.chat_template  # read through the snapshot's symlinks
    assert isinstance(dg.generate(model, messages=[{"role": "user", "content": "Hi"}], **kwargs).text, str)
    assert find_model(REPO) == snapshot and hub_cache_snapshots(REPO) == [snapshot]
    assert dg.load_model("hf://org/name", device="cpu", local_files_only=True).path == snapshot
    assert "reads " + str(snapshot) in hub.load_plan(REPO)


def test_a_revision_pin_loads_that_snapshot(cache, checkpoint):
    add_snapshot(cache, REPO, checkpoint("plain"), MAIN)  # vocabulary 1000
    pinned = add_snapshot(cache, REPO, checkpoint("ring"), PINNED, refs=("v2",))  # vocabulary 997
    assert dg.load_model(REPO, device="cpu").config.vocab_size == 1000
    for spelled, revision in ((REPO, PINNED), (REPO, "v2"), (f"hf://{REPO}@{PINNED}", None), (f"hf://{REPO}@v2", None)):
        model = dg.load_model(spelled, device="cpu", revision=revision)
        assert model.path == pinned and model.config.vocab_size == 997
    assert read_config(REPO, revision="v2")[1].vocab_size == 997
    with pytest.raises(CheckpointError, match=f"revision {'c' * 40}.*`hf download org/name --revision {'c' * 40}`"):
        dg.load_model(REPO, revision="c" * 40)


def test_a_local_directory_wins_over_an_id_of_the_same_spelling(cache, checkpoint, tmp_path, monkeypatch):
    add_snapshot(cache, REPO, checkpoint("plain"), MAIN)
    shutil.copytree(checkpoint("ring"), tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **k: pytest.fail("the hub was consulted"))
    model = dg.load_model(REPO, device="cpu")
    assert model.config.vocab_size == 997 and model.path == Path(REPO)
    assert find_model(REPO) == tmp_path / REPO


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "local_files_only"])
def test_an_id_not_in_the_cache_names_the_command_that_fetches_it(cache, how, monkeypatch):
    if how == "local_files_only":  # downloads allowed, but not by this call
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    kwargs = {"local_files_only": True} if how == "local_files_only" else {}
    real = hub.snapshot_download

    def lookup_only(*args, **kw):
        assert kw.get("local_files_only"), "a download was attempted"
        return real(*args, **kw)

    monkeypatch.setattr(hub, "snapshot_download", lookup_only)
    with pytest.raises(CheckpointError) as e:
        dg.load_model("org/missing", **kwargs)
    msg = str(e.value)
    assert "org/missing is not in the local Hugging Face cache" in msg and str(cache) in msg
    assert "`hf download org/missing`" in msg and ("HF_HUB_OFFLINE=1" if how == "HF_HUB_OFFLINE" else how) in msg
    assert "No local directory 'org/missing'" in msg
    with pytest.raises(CheckpointError, match=r"`hf download google/diffusiongemma-26B-A4B-it` \(about 50 GB\)"):
        dg.load_model(hub.OFFICIAL_REPO, **kwargs)
    with pytest.raises(CheckpointError, match="`hf download org/missing`"):
        find_model("org/missing", **kwargs)


def test_a_partly_cached_snapshot_is_not_loaded_offline(cache, checkpoint):
    files = [p.name for p in checkpoint("plain").iterdir() if p.name != "model.safetensors"]
    add_snapshot(cache, REPO, checkpoint("plain"), MAIN, files=files)
    assert read_config(REPO)[1].vocab_size == 1000  # the configs are there
    with pytest.raises(CheckpointError, match=r"only partly in the local Hugging Face cache.*lacks model\.safetensors"
                                              r".*`hf download org/name`"):
        dg.load_model(REPO)


def test_an_id_not_in_the_cache_is_downloaded(downloads, cache):
    model = dg.load_model(REPO, device="cpu")
    assert model.path == cache / "models--org--name" / "snapshots" / MAIN
    # The configs first (the device's room is checked from them), then the files the kit reads.
    assert [c["allow_patterns"] for c in downloads] == [list(hub.CONFIG_FILES), list(hub.KIT_FILES)]
    assert all(c["repo_id"] == REPO and c["revision"] is None for c in downloads)
    assert not (model.path / "pytorch_model.bin").exists() and (model.path / "tokenizer.json").exists()
    assert isinstance(dg.generate(model, "Hi", max_new_tokens=8, max_denoising_steps=2).text, str)
    dg.load_model(REPO, device="cpu")  # now cached: nothing more is downloaded
    assert len(downloads) == 2
    dg.load_model(REPO, device="cpu", revision=MAIN)
    assert len(downloads) == 2


def test_a_device_without_room_is_refused_before_the_weights_are_downloaded(downloads, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "available_memory", lambda device: 1024)
    with pytest.raises(DeviceError, match="org/name needs about .* GiB on cpu"):
        dg.load_model(REPO, device="cpu")
    assert [c["allow_patterns"] for c in downloads] == [list(hub.CONFIG_FILES)]


def test_info_fetches_the_configs_only(downloads):
    path, config = read_config(REPO, revision="main")
    assert config.vocab_size == 1000 and sorted(p.name for p in path.iterdir()) == sorted(hub.CONFIG_FILES)
    assert downloads == [dict(repo_id=REPO, revision="main", allow_patterns=list(hub.CONFIG_FILES))]


def hub_error(kind: type[Exception]) -> Exception:
    http = importlib.import_module(errors.Response.__module__.split(".")[0])  # httpx or httpx2, as huggingface_hub uses
    request = http.Request("GET", f"https://huggingface.co/api/models/{REPO}")
    return kind("404 Client Error", response=errors.Response(404, request=request))


@pytest.mark.parametrize("raised, words", [
    (hub_error(errors.GatedRepoError), r"gated on the Hugging Face Hub: accept its terms at https://hugging"),
    (hub_error(errors.RepositoryNotFoundError), r"not a model on the Hugging Face Hub.*No local directory 'org/name'"),
    (hub_error(errors.RevisionNotFoundError), r"has no revision 'v9' on the Hugging Face Hub"),
    (OSError(28, "No space left on device"), r"failed \(\[Errno 28\] No space left on device\).*resumes.*hf download"),
])
def test_download_failures_get_the_kits_error(downloads, monkeypatch, raised, words):
    def fail(repo_id, *, local_files_only=False, **kw):
        if local_files_only:
            return real_snapshot_download(repo_id, local_files_only=True, **kw)
        raise raised

    monkeypatch.setattr(hub, "snapshot_download", fail)
    with pytest.raises(CheckpointError, match=words):
        dg.load_model(REPO, revision="v9" if isinstance(raised, errors.RevisionNotFoundError) else None)


def test_the_environment_report_never_downloads(downloads, cache, checkpoint, tmp_path):
    report = environment_report(["org/missing"], tiny_path=tmp_path / "none", official_path=tmp_path / "none")
    assert downloads == [] and not report.model("given").found
    snapshot = add_snapshot(cache, REPO, checkpoint("plain"), MAIN)
    report = environment_report([REPO], tiny_path=tmp_path / "none", official_path=tmp_path / "none")
    assert downloads == [] and report.model("given").path == snapshot and report.model("given").found


def test_load_plan_says_what_load_model_would_do(cache, monkeypatch, tmp_path):
    assert "Here downloads are off (HF_HUB_OFFLINE=1)" in hub.load_plan(hub.OFFICIAL_REPO)
    assert "`hf download google/diffusiongemma-26B-A4B-it`" in hub.load_plan(hub.OFFICIAL_REPO)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    plan = hub.load_plan(hub.OFFICIAL_REPO)
    assert "would download" in plan and "about 50 GB" in plan and "downloads are off" not in plan
    assert "local_files_only=True" in hub.load_plan(hub.OFFICIAL_REPO, local_files_only=True)
    assert "is a local path" in hub.load_plan(str(tmp_path))


# ---- the command line, with the cache named by the environment as users name it --------------------------
def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "dgemma_helpers", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cache)


def test_cli_takes_hub_ids(cache, checkpoint):
    add_snapshot(cache, REPO, checkpoint("plain"), MAIN)
    add_snapshot(cache, REPO, checkpoint("ring"), PINNED, refs=())
    info = run_cli("info", "--model", REPO, cache=cache)
    assert info.returncode == 0 and '"vocab_size": 1000' in info.stdout, info.stderr
    out = run_cli("generate", "--model", f"hf://{REPO}@{PINNED}", "--prompt", "The sky", "--max-new-tokens", "8",
                  "--steps", "2", cache=cache)
    assert out.returncode == 0 and "tokens per forward" in out.stderr, out.stderr
    missing = run_cli("memory", "--model", "org/missing", "--prompt-tokens", "100", cache=cache)
    assert missing.returncode == 2 and "`hf download org/missing`" in missing.stderr
    assert missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
