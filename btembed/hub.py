"""Resolve a model name to a folder (embedded default | local folder | registry name | Hugging Face repo),
verify sha256 hashes, and save model folders. Weights are safetensors only: nothing is ever unpickled."""
from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .config import ModelConfig
from .errors import ModelError

__version__ = "0.1.0"

WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
# What a model repo holds; a download fetches only these.
MODEL_FILES = ("config.json", WEIGHTS_FILE, "README.md")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@lru_cache(maxsize=1)
def load_registry() -> dict:
    """The released-model registry shipped as package data (btembed/registry.json)."""
    return json.loads(resources.files("btembed").joinpath("registry.json").read_text())


def embedded_dir() -> Path:
    """The folder holding models shipped inside the package."""
    return Path(str(resources.files("btembed").joinpath("weights")))


def shared_location(folder: str | Path) -> str | None:
    """Which shared place a model folder lies in (never to be written into), or None for a folder of one's own."""
    resolved = Path(folder).resolve()
    parts = resolved.parts
    # How resolve_model's sources look on disk: snapshot_download gives HF_HUB_CACHE/models--ORG--NAME/snapshots/REV.
    if "snapshots" in parts and any(p.startswith("models--") for p in parts):
        return "a Hugging Face cache snapshot"
    if resolved.is_relative_to(embedded_dir().resolve()):
        return "a model embedded in the btembed package"
    if "site-packages" in parts or "dist-packages" in parts:
        return "an installed Python package"
    return None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_file(folder: Path, config: ModelConfig, name: str, expected: str | None = None) -> Path:
    """Check folder/name against the sha256 recorded in config.json (and the registry, if given)."""
    path = Path(folder) / name
    if not path.is_file():
        raise ModelError(f"model folder {folder} has no {name}; the download is incomplete or the folder damaged")
    recorded = config.files.get(name)
    if recorded is None and expected is None:
        raise ModelError(f"{path} has no sha256 in config.json 'files'; refusing unverified weights "
                         "(re-save the folder with btembed to record hashes)")
    actual = sha256_file(path)
    for want, where in ((recorded, "config.json"), (expected, "the registry")):
        if want is not None and actual != want:
            raise ModelError(f"{path} is corrupt: its sha256 {actual[:12]}… does not match {want[:12]}… "
                             f"recorded in {where}; delete the folder (or its cache entry) and fetch it again")
    return path


def load_state_dict(folder: str | Path, config: ModelConfig | None = None) -> dict:
    """The verified trunk state dict of a model folder, as float32 tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config = config or ModelConfig.load(folder)
    path = verify_file(folder, config, WEIGHTS_FILE)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{path} is not a readable safetensors file ({e})") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def save_pretrained(encoder, folder: str | Path, card: str | None = None, dtype=None) -> Path:
    """Write a model folder: model.safetensors, config.json with hashes and version, README.md card."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = encoder.state_dict_for_save()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    weights = folder / WEIGHTS_FILE
    unchanged = _unchanged_weights_sha256(folder, state)
    tmp = weights.with_suffix(".tmp")
    # One metadata key only: safetensors writes metadata in no fixed order, so two keys made the file's bytes (and
    # the sha256 that config.json and the registry pin) differ between saves of the same weights. The
    # architecture is in config.json.
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, weights)
    os.chmod(weights, 0o644)  # the temp file was private; a model folder is meant to be shared
    config = encoder.config
    config.btembed_version = __version__
    config.files = {WEIGHTS_FILE: sha256_file(weights)}
    config.files.update(_onnx_matching(folder, {config.files[WEIGHTS_FILE], unchanged} - {None}))
    if not config.name:
        config.name = folder.name
    config.save(folder)
    if card is None:
        from .card import render_card

        card = render_card(config)
    (folder / "README.md").write_text(card)
    return folder


def _unchanged_weights_sha256(folder: Path, state: dict) -> str | None:
    """sha256 of the folder's weights file when it holds exactly these tensors and an ONNX export may be kept."""
    from safetensors.torch import load_file

    from .backends.onnx import INT8_FILE

    path = folder / WEIGHTS_FILE
    if not path.is_file() or not any((folder / n).is_file() for n in (ONNX_FILE, INT8_FILE)):
        return None
    try:
        old = load_file(str(path))
    except Exception:  # unreadable: treat as different weights
        return None
    # Compared by value, not by sha256: files written by older btembed versions (two metadata keys, no fixed order)
    # can differ in bytes from a new save of the same tensors.
    same = old.keys() == state.keys() and all(
        old[k].dtype == state[k].dtype and old[k].shape == state[k].shape and bool((old[k] == state[k]).all())
        for k in state)
    return sha256_file(path) if same else None


def _onnx_matching(folder: Path, weights_sha256: set) -> dict:
    """{name: sha256} of the folder's ONNX exports made from these weights; exports of other weights are deleted."""
    # The onnx backend runs a folder's model.onnx as it is, so one left over from the weights this save replaced
    # would silently give the old model's vectors. Every btembed export stamps weights_sha256 into its metadata.
    import warnings

    from .backends.onnx import INT8_FILE

    kept = {}
    for name in (ONNX_FILE, INT8_FILE):
        path = folder / name
        if not path.is_file():
            continue
        try:
            from .export import read_metadata

            stamped = read_metadata(path).get("weights_sha256")
        except Exception as e:  # onnx raises its own types for unreadable files
            warnings.warn(f"{path} cannot be read ({type(e).__name__}); it was not recorded in config.json",
                          stacklevel=3)
            continue
        if stamped in weights_sha256:
            kept[name] = sha256_file(path)
        elif stamped:
            path.unlink()
            warnings.warn(f"removed {path}: it was exported from other weights than the ones just saved; "
                          "export it again (btembed export)", stacklevel=3)
        else:
            warnings.warn(f"{path} does not say which weights it was exported from; it was not recorded in "
                          "config.json", stacklevel=3)
    return kept


def registry_entry(name: str) -> dict | None:
    """The registry entry for a released-model name, or None."""
    return load_registry().get("models", {}).get(name)


def _download(repo_id: str, revision: str | None, allow_patterns, unreleased: bool = False) -> Path:
    """Fetch a repo snapshot via huggingface_hub (its cache, revision pinning, HF_HUB_OFFLINE).

    unreleased: the registry knows the name but has no release yet, so only the local cache is looked at.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    what = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(allow_patterns),
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


def resolve_model(name_or_path=None, *, revision: str | None = None,
                  allow_patterns=MODEL_FILES) -> Path:
    """Name → local model folder: None (embedded default), a folder, a registry name, or an org/name repo."""
    registry = load_registry()
    if name_or_path is None:
        name_or_path = registry.get("default")
        if not name_or_path:
            raise ModelError("this install ships no embedded default model yet; pass --model with a model "
                             "folder (see README: 'Getting a model')")
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    entry = registry.get("models", {}).get(text)
    if entry is not None:
        if entry.get("embedded"):
            folder = embedded_dir() / entry["embedded"]
            if folder.is_dir():
                return folder
        folder = _download(entry["repo_id"], revision or entry.get("revision"), allow_patterns,
                           unreleased=not entry.get("released"))
        pinned = (entry.get("files") or {}).get("config.json")
        if pinned and revision in (None, entry.get("revision")):
            # The registry pins config.json, which pins the weights: a hash chain from the installed package.
            verify_file(folder, ModelConfig(), "config.json", expected=pinned)
        return folder
    if path.exists():
        raise ModelError(f"{text} is a file, not a model folder (a folder with config.json and model.safetensors)")
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if _REPO_ID.match(text) and not looks_like_path:
        return _download(text, revision, allow_patterns)
    raise ModelError(f"model {text!r} is neither a folder here, a registry name, nor a Hugging Face repo id "
                     "(org/name)")
