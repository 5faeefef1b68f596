"""Write and check btembed/registry.json: the released-model table the library ships as package data.

Rule of the registry: nothing invented. A released entry pins a 40-hex commit and the sha256 of its files (both
come from a real upload); an unreleased entry has neither. A `source` block names the authors' own file: its sha256
and size are null until someone downloaded the real file and recorded them (docs/hub.md, "Pinning a source").
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from btembed.config import DUPLICATE_THRESHOLD_KEYS, ModelConfig
from btembed.errors import BtembedError

REGISTRY_PATH = Path(__file__).resolve().parent.parent / "btembed" / "registry.json"
ENTRY_KEYS = ("repo_id", "released", "revision", "architecture", "embedding_dim", "license", "files", "metrics",
              "embedded", "description", "source", *DUPLICATE_THRESHOLD_KEYS)
SOURCE_KEYS = ("url", "sha256", "size", "format", "license", "reported")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class RegistryError(BtembedError):
    """A registry file or entry that breaks the registry's rules."""


def read_registry(path: str | Path = REGISTRY_PATH) -> dict:
    """The registry document at path."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RegistryError(f"registry {path} cannot be read ({e})") from None


def write_registry(registry: dict, path: str | Path = REGISTRY_PATH) -> None:
    """Write the registry atomically (temp file + rename), keys in a stable order."""
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(registry, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def entry_from_folder(folder: str | Path, repo_id: str, revision: str | None,
                      description: str = "", embedded: str | None = None) -> dict:
    """A registry entry describing a model folder as uploaded to repo_id at commit revision."""
    config = ModelConfig.load(folder)
    metrics = dict(config.metrics)
    reported = (config.source or {}).get("reported_metrics")
    if reported:
        # kept apart and named so nobody mistakes them for numbers we measured
        metrics["reported_by_original_authors"] = {k: v["value"] if isinstance(v, dict) else v
                                                   for k, v in reported.items()}
    from btembed.modelfiles import sha256_file

    files = {p.name: sha256_file(p) for p in sorted(Path(folder).iterdir())
             if p.is_file() and p.name in ("config.json", "model.safetensors", "model.onnx", "README.md")}
    return {
        "repo_id": repo_id,
        "released": revision is not None,
        "revision": revision,
        "architecture": config.architecture,
        "embedding_dim": config.embedding_dim,
        "license": config.license,
        "files": files if revision is not None else {},
        "metrics": metrics,
        "embedded": embedded,
        "description": description or (config.source or {}).get("description", "") or config.name,
        # absent when the folder records none: set_entry then keeps a value the registry already carries
        **{k: getattr(config, k) for k in DUPLICATE_THRESHOLD_KEYS if getattr(config, k) is not None},
    }


def check_entry(name: str, entry: dict) -> list[str]:
    """Rule violations of one entry (empty when it is fine)."""
    optional = ("embedded", "source", *DUPLICATE_THRESHOLD_KEYS)
    problems = [f"{name}: missing key {k!r}" for k in ENTRY_KEYS if k not in entry and k not in optional]
    problems += check_source(name, entry)
    for key in DUPLICATE_THRESHOLD_KEYS:
        threshold = entry.get(key)
        if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
            problems.append(f"{name}: {key} {threshold!r} is not a cosine in (0, 1]")
    if entry.get("released"):
        if not _SHA1.match(str(entry.get("revision") or "")):
            problems.append(f"{name}: released but its revision is not a 40-hex commit sha")
        if "model.safetensors" not in (entry.get("files") or {}):
            problems.append(f"{name}: released but no sha256 recorded for model.safetensors")
    elif entry.get("revision") or entry.get("files"):
        problems.append(f"{name}: not released, so it must have no revision and no file hashes")
    for fname, digest in (entry.get("files") or {}).items():
        if not _SHA256.match(str(digest)):
            problems.append(f"{name}: files[{fname!r}] is not a sha256 hex digest")
    return problems


def check_source(name: str, entry: dict) -> list[str]:
    """Rule violations of an entry's source block (the authors' file), if it has one."""
    from btembed.convert import FORMATS

    source = entry.get("source")
    if source is None:
        return []
    problems = [f"{name}: source has no {k!r}" for k in SOURCE_KEYS if k not in source]
    if not str(source.get("url", "")).startswith("https://"):
        problems.append(f"{name}: source url must be an https:// URL")
    if source.get("sha256") is not None and not _SHA256.match(str(source["sha256"])):
        problems.append(f"{name}: source sha256 is neither null nor a sha256 hex digest")
    if source.get("size") is not None and not (isinstance(source["size"], int) and source["size"] > 0):
        problems.append(f"{name}: source size is neither null nor a positive byte count")
    if source.get("format") not in FORMATS:
        problems.append(f"{name}: source format {source.get('format')!r} is not one of {', '.join(FORMATS)}")
    if source.get("license") != entry.get("license"):
        problems.append(f"{name}: the entry's license and its source's license differ")
    return problems


def check_registry(registry: dict) -> list[str]:
    """Rule violations of a whole registry document."""
    models = registry.get("models")
    if not isinstance(models, dict):
        return ["registry has no 'models' mapping"]
    problems = [p for name, entry in models.items() for p in check_entry(name, entry)]
    default = registry.get("default")
    if default is not None and default not in models:
        problems.append(f"default {default!r} is not an entry of 'models'")
    elif default is not None and not models[default].get("embedded"):
        problems.append(f"default {default!r} must be an embedded model (the offline fallback)")
    return problems


def set_entry(name: str, entry: dict, *, make_default: bool = False, path: str | Path = REGISTRY_PATH) -> dict:
    """Add or replace one entry (and optionally make it the default), refusing anything that breaks the rules."""
    registry = read_registry(path)
    registry.setdefault("default", None)
    old = registry.setdefault("models", {}).get(name) or {}
    # An entry rebuilt from an uploaded folder keeps the authors' source it was converted from.
    registry["models"][name] = {k: entry.get(k, old.get(k)) for k in ENTRY_KEYS if k in entry or k in old}
    if make_default:
        registry["default"] = name
    problems = check_registry(registry)
    if problems:
        raise RegistryError("refusing to write the registry: " + "; ".join(problems))
    write_registry(registry, path)
    return registry


def record_duplicate_threshold(name: str, threshold: float, metrics: dict, *, embedding_only: float | None = None,
                               path: str | Path = REGISTRY_PATH) -> None:
    """Put a calibrated duplicate threshold (and the one without the pixel check, when calibrated) and their
    measured precision/recall into an existing entry."""
    registry = read_registry(path)
    entry = registry.get("models", {}).get(name)
    if entry is None:
        raise RegistryError(f"registry {path} has no entry {name!r}; add it first (python -m hub registry add) or "
                            "name an existing one with --name")
    entry["duplicate_threshold"] = threshold
    if embedding_only is not None:
        entry["duplicate_threshold_embedding_only"] = embedding_only
    entry.setdefault("metrics", {}).update(metrics)
    problems = check_registry(registry)
    if problems:
        raise RegistryError("refusing to write the registry: " + "; ".join(problems))
    write_registry(registry, path)
