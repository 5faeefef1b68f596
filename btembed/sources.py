"""Where model names come from: the package default, a folder, the registry, the Hugging Face Hub.

`locate` turns any name into a local folder; `btembed.modelfolder.ModelFolder.resolve` is the entry point that
calls it once and passes the result down. registry.json (or $BTEMBED_REGISTRY) is this module's data.
"""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .config import ModelConfig
from .errors import ModelError
from .modelfiles import CONFIG_FILE, MODEL_FILES, embedded_dir, verify_file

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def registry_path() -> str | None:
    """The registry file named by $BTEMBED_REGISTRY, or None for the one shipped in the package."""
    return os.environ.get("BTEMBED_REGISTRY") or None


def load_registry() -> dict:
    """The model registry: $BTEMBED_REGISTRY when set, else btembed/registry.json shipped as package data."""
    return _read_registry(registry_path())


@lru_cache(maxsize=4)
def _read_registry(path: str | None) -> dict:
    if path is None:
        return json.loads(resources.files("btembed").joinpath("registry.json").read_text())
    try:
        return json.loads(Path(path).expanduser().read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"the registry {path} named by BTEMBED_REGISTRY cannot be read ({e}); fix or unset "
                         "BTEMBED_REGISTRY") from None


def registry_entry(name: str) -> dict | None:
    """The registry entry for a model name, or None."""
    return load_registry().get("models", {}).get(name)


def default_name() -> str:
    """The registry name of the embedded default model."""
    name = load_registry().get("default")
    if not name:
        raise ModelError("this install ships no embedded default model yet; pass --model with a model "
                         "folder (see README: 'Getting a model')")
    return name


def hf_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for no network at all."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_download(repo_id: str, revision: str | None, unreleased: bool = False) -> Path:
    """Fetch a repo snapshot via huggingface_hub (its cache, revision pinning, HF_HUB_OFFLINE).

    unreleased: the registry knows the name but has no release yet, so only the local cache is looked at.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    offline = hf_offline()
    what = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(MODEL_FILES),
                                      local_files_only=unreleased))
    except (RepositoryNotFoundError, GatedRepoError):
        raise ModelError(f"model {what} was not found on the Hugging Face Hub (or needs a login); "
                         "check the name, or pass a local model folder") from None
    except RevisionNotFoundError:
        raise ModelError(f"revision {revision!r} does not exist for model {repo_id}") from None
    except LocalEntryNotFoundError:
        why = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else "the Hugging Face Hub could not be reached"
        if unreleased:
            raise ModelError(f"model {what} is not in the local Hugging Face cache"
                             + (" (offline mode is on)" if offline else "") + " and has not been released on "
                             "the Hub yet (btembed models lists what is available); pass a local model folder "
                             "or pre-fill the cache (HF_HUB_CACHE)") from None
        raise ModelError(f"model {what} is not in the local Hugging Face cache and {why}; connect and "
                         "run once online, copy the model folder here and pass its path, or pre-fill the cache "
                         "(HF_HUB_CACHE)") from None
    except (HfHubHTTPError, OSError) as e:
        raise ModelError(f"model {what} could not be downloaded from the Hugging Face Hub "
                         f"({type(e).__name__}); pass a local model folder or retry later") from None


def _from_registry(name: str, entry: dict, revision: str | None) -> tuple[Path, str]:
    """(folder, origin) of a registry entry: embedded, then the Hub (or its local cache)."""
    if entry.get("embedded"):
        folder = embedded_dir() / entry["embedded"]
        if folder.is_dir():
            return folder, "embedded"
    folder = hub_download(entry["repo_id"], revision or entry.get("revision"), unreleased=not entry.get("released"))
    pinned = (entry.get("files") or {}).get(CONFIG_FILE)
    if pinned and revision in (None, entry.get("revision")):
        # The registry pins config.json, which pins the weights: a hash chain from the installed package.
        verify_file(folder, ModelConfig(), CONFIG_FILE, expected=pinned)
    return folder, "hub"


def locate(name_or_path=None, *, revision: str | None = None) -> tuple[Path, str, str]:
    """Any name → (local folder, the name it was asked by, origin: folder | embedded | hub).

    None means the embedded default; then a folder, a registry name, or an org/name Hugging Face repo.
    """
    text = default_name() if name_or_path is None else os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path, text, "folder"
    entry = registry_entry(text)
    if entry is not None:
        folder, origin = _from_registry(text, entry, revision)
        return folder, text, origin
    if path.exists():
        raise ModelError(f"{text} is a file, not a model folder (a folder with config.json and model.safetensors)")
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if _REPO_ID.match(text) and not looks_like_path:
        return hub_download(text, revision), text, "hub"
    raise ModelError(f"model {text!r} is neither a folder here, a registry name, nor a Hugging Face repo id "
                     "(org/name)")
