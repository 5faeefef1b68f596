"""The files of a model folder: their names (spelled only here), sha256 checks, reading and writing the weights.

A model folder is config.json + model.safetensors (+ optional model.onnx / model.int8.onnx) + README.md, the
layout of a Hugging Face Hub repo. Weights are safetensors only: nothing here ever unpickles.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from importlib import resources
from pathlib import Path

from .config import ModelConfig
from .errors import ModelError
from .version import __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CARD_FILE = "README.md"
CURVES_FILE = "curves.png"  # a trained model's training curves, shown in its card
# What a model repo holds; a Hub download fetches only these (the curves when the repo has them: its card shows them).
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, CURVES_FILE)


def embedded_dir() -> Path:
    """The folder holding models shipped inside the package."""
    return Path(str(resources.files("btembed").joinpath("weights")))


def cache_dir() -> Path:
    """btembed's own cache: $BTEMBED_CACHE, else $XDG_CACHE_HOME/btembed, else ~/.cache/btembed."""
    if os.environ.get("BTEMBED_CACHE"):
        return Path(os.environ["BTEMBED_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "btembed"


def shared_location(folder: str | Path) -> str | None:
    """Which shared place a model folder lies in (never to be written into), or None for a folder of one's own."""
    resolved = Path(folder).resolve()
    parts = resolved.parts
    # How the sources look on disk: snapshot_download gives HF_HUB_CACHE/models--ORG--NAME/snapshots/REV.
    if "snapshots" in parts and any(p.startswith("models--") for p in parts):
        return "a Hugging Face cache snapshot"
    if resolved.is_relative_to(embedded_dir().resolve()):
        return "a model embedded in the btembed package"
    if resolved.is_relative_to((cache_dir() / "models").resolve()):
        return "btembed's model cache"
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


def verify_file(folder: str | Path, config: ModelConfig, name: str, expected: str | None = None) -> Path:
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


def read_weights(folder: str | Path, config: ModelConfig) -> dict:
    """The verified trunk state dict of a model folder, as float32 tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = verify_file(folder, config, WEIGHTS_FILE)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{path} is not a readable safetensors file ({e})") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file, as a plain dict of strings."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def write_folder(state: dict, config: ModelConfig, folder: str | Path, card: str | None = None,
                 dtype=None, extra_files: tuple[str, ...] = ()) -> Path:
    """Write a model folder: model.safetensors, config.json with hashes and version, README.md card.

    config is updated in place (files, btembed_version, and name when empty), as the caller's copy of the truth.
    extra_files names files the caller already put into the folder (e.g. CURVES_FILE); their sha256 is recorded too.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
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
    config.btembed_version = __version__
    config.files = {WEIGHTS_FILE: sha256_file(weights)}
    config.files.update(_onnx_matching(folder, {config.files[WEIGHTS_FILE], unchanged} - {None}))
    config.files.update({name: sha256_file(folder / name) for name in extra_files})
    if not config.name:
        config.name = folder.name
    config.save(folder)
    if card is None:
        from .card import render_card

        card = render_card(config)
    (folder / CARD_FILE).write_text(card)
    return folder


def _unchanged_weights_sha256(folder: Path, state: dict) -> str | None:
    """sha256 of the folder's weights file when it holds exactly these tensors and an ONNX export may be kept."""
    from safetensors.torch import load_file

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
    kept = {}
    for name in (ONNX_FILE, INT8_FILE):
        path = folder / name
        if not path.is_file():
            continue
        try:
            stamped = read_onnx_metadata(path).get("weights_sha256")
        except Exception as e:  # onnx raises its own types for unreadable files
            warnings.warn(f"{path} cannot be read ({type(e).__name__}); it was not recorded in config.json",
                          stacklevel=4)
            continue
        if stamped in weights_sha256:
            kept[name] = sha256_file(path)
        elif stamped:
            path.unlink()
            warnings.warn(f"removed {path}: it was exported from other weights than the ones just saved; "
                          "export it again (btembed export)", stacklevel=4)
        else:
            warnings.warn(f"{path} does not say which weights it was exported from; it was not recorded in "
                          "config.json", stacklevel=4)
    return kept
