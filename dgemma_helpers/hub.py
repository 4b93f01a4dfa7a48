"""Hugging Face Hub ids wherever a checkpoint directory is taken (load_model, read_config, find_model,
every `--model`). A str that is no local path (a local path always wins) but reads as a model id
("org/name", "hf://org/name@REVISION", the model page's URL) is looked up in the local Hugging Face
cache by huggingface_hub itself, so a cached model loads without the network; otherwise
huggingface_hub downloads the files the kit reads into that cache, unless HF_HUB_OFFLINE=1 or
local_files_only=True, where the error gives the command that fetches it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (GatedRepoError, HfUriError, HFValidationError, IncompleteSnapshotError,
                                    LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
from huggingface_hub.utils import parse_hf_uri, validate_repo_id

from .errors import CheckpointError, InputError
from .validate import check

log = logging.getLogger("dgemma_helpers")

OFFICIAL_REPO = "google/diffusiongemma-26B-A4B-it"
OFFICIAL_SIZE = "about 50 GB"
# What the kit reads from a checkpoint (checkpoint.py, tokenizer.py, vision.py), and so all that a
# download fetches: the configs alone when only the config is read (info, memory, read_config).
CONFIG_FILES = ("config.json", "generation_config.json")
KIT_FILES = CONFIG_FILES + (
    "*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "processor_config.json", "preprocessor_config.json",
    "dgemma_random.json",  # the kit's mark of an untrained random checkpoint
)


@dataclass(frozen=True)
class HubModel:
    """A model on the Hugging Face Hub: its repo id and, if pinned, a revision (commit, branch or tag)."""

    repo_id: str
    revision: str | None = None
    spelled: str = field(default="", compare=False)  # as the caller wrote it, for messages

    def __str__(self) -> str:
        return self.repo_id + (f" (revision {self.revision})" if self.revision else "")

    @property
    def fetch_command(self) -> str:
        """The shell command that puts this model into the local Hugging Face cache."""
        return f"hf download {self.repo_id}" + (f" --revision {self.revision}" if self.revision else "")


def hub_model(path: object, revision: str | None = None) -> HubModel | None:
    """The Hub model that `path` names, or None for a local path. Only a str can be an id, and only
    when no file or directory of that name exists here; `revision` pins one and needs one."""
    found = _parse(path, revision)
    check(found is not None or revision is None, InputError, f"revision={revision!r} pins a model on the Hugging "
          f"Face Hub, but {str(path)!r} is not a Hub model id: drop revision for a local checkpoint directory, or give "
          f"an id such as {OFFICIAL_REPO!r}.")
    return found


def _parse(path: object, revision: str | None) -> HubModel | None:
    check(revision is None or (isinstance(revision, str) and revision.strip()), InputError,
          f"revision must be a commit hash, branch or tag (a non-empty str), got {revision!r}.")
    if not isinstance(path, str) or not path.strip() or Path(path).expanduser().exists():
        return None
    if "://" in path:  # hf://org/name@REVISION, or the model page's URL
        try:
            uri = parse_hf_uri(path)
        except HfUriError as e:
            raise InputError(f"{path!r} is neither a local path nor a Hugging Face Hub address ({e.msg}): give a "
                             "checkpoint directory, 'org/name', or 'hf://org/name@REVISION'.") from None
        check(uri.type == "model" and not uri.path_in_repo, InputError, f"{path!r} names "
              f"{'a file in ' if uri.path_in_repo else ''}a Hugging Face {uri.type}, not a model: give the model "
              f"itself, e.g. 'hf://{uri.id}'.")
        check(None in (revision, uri.revision) or revision == uri.revision, InputError, f"{path!r} pins revision "
              f"{uri.revision!r} but revision={revision!r} was passed too: give one of them.")
        return HubModel(uri.id, revision or uri.revision, spelled=path)
    # "models/dgemma-tiny" is a path: "models", "datasets", ... are the Hub's type prefixes, never a namespace
    if path.count("/") != 1 or path.split("/")[0] in constants.HF_URI_TYPE_PREFIXES:
        return None
    try:
        validate_repo_id(path)
    except HFValidationError:
        return None
    return HubModel(path, revision, spelled=path)


def _in_cache(model: HubModel, files: tuple[str, ...]) -> tuple[Path | None, str]:
    """The cached snapshot of `model` that holds `files`, found by huggingface_hub without the
    network, or None and why not."""
    try:
        folder = Path(snapshot_download(model.repo_id, revision=model.revision, allow_patterns=list(files),
                                        local_files_only=True))
    except IncompleteSnapshotError as e:  # huggingface_hub knows the repo's file list and some are missing
        return None, f"is only partly in the local Hugging Face cache ({e})"
    except LocalEntryNotFoundError:
        return None, f"is not in the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    # Only names are looked up: a missing shard is huggingface_hub's to see (its file list of the repo)
    # or checkpoint.index_checkpoint's, which names it.
    lacking = [] if (folder / "config.json").exists() else ["config.json"]
    weights = ("model.safetensors", "model.safetensors.index.json")
    if "*.safetensors" in files and not any((folder / f).exists() for f in weights):
        lacking.append("model.safetensors (or model.safetensors.index.json)")
    if lacking:
        return None, f"is only partly in the local Hugging Face cache: {folder} lacks {', '.join(lacking[:3])}"
    return folder, ""


def cached_snapshot(model: HubModel | str, files: tuple[str, ...] = KIT_FILES) -> Path | None:
    """The snapshot directory of `model` in the local Hugging Face cache, if it holds `files` (nothing is fetched)."""
    model = model if isinstance(model, HubModel) else HubModel(model)
    return _in_cache(model, files)[0]


def downloads_off(local_files_only: bool = False) -> str | None:
    """Why nothing may be downloaded (local_files_only=True, HF_HUB_OFFLINE=1 as huggingface_hub read
    it), or None when downloads are allowed."""
    if local_files_only:
        return "local_files_only=True"
    return "HF_HUB_OFFLINE=1" if constants.is_offline_mode() else None


def snapshot(model: HubModel, files: tuple[str, ...] = KIT_FILES, *, local_files_only: bool = False,
             not_local: str | None = None) -> Path:
    """The local snapshot directory of `model` holding `files`: from the cache when it is there,
    else downloaded by huggingface_hub (refused when downloads are off, with the command that
    fetches it). `not_local` says where a local directory of that name was looked for."""
    folder, why = _in_cache(model, files)
    if folder is not None:
        return folder
    size = f" ({OFFICIAL_SIZE})" if model.repo_id == OFFICIAL_REPO else ""  # what `hf download` fetches
    not_local = not_local or f"No local directory {model.spelled or model.repo_id!r} exists in {Path.cwd()} either."
    off = downloads_off(local_files_only)
    if off is not None:
        allow = "pass local_files_only=False" if off.startswith("local") else "unset HF_HUB_OFFLINE"
        raise CheckpointError(f"{model} {why}, and downloads are off ({off}): fetch it with `{model.fetch_command}`"
                              f"{size} and load it again, or {allow} to let the kit download it. {not_local}")
    what = ("the config files of ", "") if files == CONFIG_FILES else ("", size)
    log.info("downloading %s%s%s from the Hugging Face Hub into %s (an interrupted download resumes)", what[0], model,
             what[1], constants.HF_HUB_CACHE)
    try:
        return Path(snapshot_download(model.repo_id, revision=model.revision, allow_patterns=list(files)))
    except GatedRepoError:
        raise CheckpointError(f"{model.repo_id} is gated on the Hugging Face Hub: accept its terms at "
                              f"https://huggingface.co/{model.repo_id}, log in (`hf auth login`, or set HF_TOKEN), "
                              "and load it again.") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{model.repo_id} is not a model on the Hugging Face Hub (repository not found; a "
                              f"private one needs `hf auth login`). {not_local}") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{model.repo_id} has no revision {model.revision!r} on the Hugging Face Hub: pin a "
                              "commit, branch or tag that it has "
                              f"(https://huggingface.co/{model.repo_id}/commits/main).") from None
    except OSError as e:  # the Hub unreachable or failing, the disk full, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"downloading {model} from the Hugging Face Hub failed ({reason}): check the network and "
                              f"the free space under {constants.HF_HUB_CACHE}, then load it again (the download "
                              f"resumes), or fetch it with `{model.fetch_command}`.") from e


def load_plan(path: str, revision: str | None = None, *, local_files_only: bool = False) -> str:
    """What load_model(path) would do here with the Hub, in words; nothing is fetched."""
    model = hub_model(path, revision)
    if model is None:
        return f"{path!r} is a local path: load_model reads it from disk and never the Hub."
    folder = cached_snapshot(model)
    if folder is not None:
        return f"{model} is in the local Hugging Face cache: load_model reads {folder} without the network."
    size = f" ({OFFICIAL_SIZE})" if model.repo_id == OFFICIAL_REPO else ""
    off = downloads_off(local_files_only)
    return (f"{model} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}): load_model would download "
            f"its config, tokenizer and safetensors files{size} into it (a progress bar per file; an interrupted "
            "download resumes), once its config.json has shown that the device has room"
            + (f". Here downloads are off ({off}), so it would refuse and name the command that fetches it, "
               f"`{model.fetch_command}`." if off else "."))
